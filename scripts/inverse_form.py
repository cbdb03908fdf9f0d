"""Train the inverse-transformation network of the InverseForm loss on a dataset's label boundaries.

The InverseForm loss needs a frozen network that regresses the affine transform between two boundary maps. No
3D network is published (the official one is 2D, trained on street scenes), so the bundle trains its own::

    python -m scripts.inverse_form train --dataset_dir /data/Task04_Hippocampus

The command cuts tiles from the boundaries of the dataset's training labels (``dataset.json``, key
``training``) and warps each with a random 3D affine transform. It trains
:class:`scripts.losses.boundary.inverse_form.InverseFormNet` to regress the transform, with the mean squared error
on the 12 parameters of ``[A - I | t]``. The run is logged to MLflow (parameters, the losses of every epoch, the
checkpoint as an artifact), and the network is saved to ``models/inverse_form_net.pt``, the file that
``configs/losses/inverse_form.yaml`` points at.

The tiles are cut at the labels' own voxel grid. NOTE: when the training pipeline resamples the images to another
spacing, the network sees boundaries at a different scale than it was trained on; train it on labels at the
training spacing in that case.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import BUNDLE_ROOT
from .cli import run_commands
from .data.datalist import DATASET_JSON, load_datalist, read_dataset_json
from .data.split import fold_split
from .losses.boundary.inverse_form import DEFAULT_CHECKPOINT, InverseFormNet, resolve_checkpoint, save_inverse_form_net
from .options import as_bool, as_int
from .tracking import connect
from .transforms.boundary import label_boundary

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "seglosses-inverse-form"


def default_tracking_uri() -> str:
    """Return the bundle's MLflow store, ``sqlite:///<bundle>/outputs/mlflow.db``."""
    return f"sqlite:///{Path(BUNDLE_ROOT) / 'outputs' / 'mlflow.db'}"


@dataclass(frozen=True)
class TransformRanges:
    """Ranges of the random affine transforms, in the tile's normalised coordinates (``[-1, 1]`` per axis).

    The defaults cover the misalignments a segmentation makes at a boundary: small rotations and scalings and
    shifts of up to two voxels of a 16-voxel tile.
    """

    rotation_degrees: float = 10.0
    scale: float = 0.1
    shear: float = 0.05
    translation: float = 0.25
    identity_probability: float = 0.2

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}.")
        if self.scale >= 1 or self.identity_probability > 1:
            raise ValueError(
                f"scale must be below 1 and identity_probability at most 1, got {self.scale} and "
                f"{self.identity_probability}."
            )


def random_affines(count: int, ranges: TransformRanges, generator: torch.Generator) -> Tensor:
    """Return ``(count, 3, 4)`` random affine matrices ``[A | t]`` in ``affine_grid``'s convention."""

    def uniform(*shape: int, bound: float) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound

    angles = uniform(count, 3, bound=math.radians(ranges.rotation_degrees))
    cos, sin = angles.cos(), angles.sin()
    eye = torch.eye(3).expand(count, 3, 3)
    rotations = []
    for axis, (first, second) in enumerate(((1, 2), (0, 2), (0, 1))):
        rotation = eye.clone()
        rotation[:, first, first] = cos[:, axis]
        rotation[:, second, second] = cos[:, axis]
        rotation[:, first, second] = -sin[:, axis]
        rotation[:, second, first] = sin[:, axis]
        rotations.append(rotation)
    scale = torch.diag_embed(1.0 + uniform(count, 3, bound=ranges.scale))
    shear = eye + uniform(count, 3, 3, bound=ranges.shear) * (1.0 - torch.eye(3))
    matrix = rotations[0] @ rotations[1] @ rotations[2] @ scale @ shear
    translation = uniform(count, 3, 1, bound=ranges.translation)
    affines = torch.cat([matrix, translation], dim=2)

    identity = torch.rand(count, generator=generator) < ranges.identity_probability
    affines[identity] = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
    return affines


class TilePairSampler:
    """Draws (moved, reference) tile pairs and their transforms from a list of boundary volumes.

    A reference tile is a ``T``-voxel cube that contains at least one boundary voxel. The moved tile is the same
    region of the boundary map warped by a random affine transform; it is sampled from a cube twice as large
    around the tile. Boundary content thus moves in from outside the tile, as it would in a prediction. Half of the
    moved tiles get a random intensity scale and noise, so that they look like soft predicted boundaries.
    """

    def __init__(self, boundaries: list[Tensor], tile_size: int, ranges: TransformRanges) -> None:
        self.tile_size = tile_size
        self.ranges = ranges
        # A context cube reaches 1.5 tiles beyond a boundary voxel, so that much padding keeps it inside the volume.
        self.volumes = [F.pad(volume, (3 * tile_size // 2,) * 6) for volume in boundaries]
        self.boundary_voxels = [torch.nonzero(volume) for volume in self.volumes]
        if not any(len(voxels) for voxels in self.boundary_voxels):
            raise ValueError(
                "the labels have no boundary voxels (every case contains a single label); check the dataset."
            )

    def sample(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``count`` moved tiles, reference tiles (each ``(count, 1, T, T, T)``) and targets ``(count, 12)``."""
        size = self.tile_size
        candidates = [index for index, voxels in enumerate(self.boundary_voxels) if len(voxels)]
        contexts = []
        for _ in range(count):
            case = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
            voxels = self.boundary_voxels[case]
            voxel = voxels[int(torch.randint(len(voxels), (1,), generator=generator))]
            start = voxel - torch.randint(size, (3,), generator=generator) - size // 2
            region = tuple(slice(int(first), int(first) + 2 * size) for first in start)
            contexts.append(self.volumes[case][region])
        context = torch.stack(contexts).unsqueeze(1)

        affines = random_affines(count, self.ranges, generator)
        grid = F.affine_grid(affines, [count, 1, size, size, size], align_corners=False)
        # The grid is in the tile's normalised coordinates; the context spans twice the extent.
        moved = F.grid_sample(context, grid / 2.0, mode="bilinear", padding_mode="zeros", align_corners=False)
        inner = slice(size // 2, size // 2 + size)
        reference = context[:, :, inner, inner, inner]

        soft = torch.rand(count, generator=generator) < 0.5
        gain = 0.5 + 0.5 * torch.rand(count, 1, 1, 1, 1, generator=generator)
        noise = 0.05 * torch.randn(moved.shape, generator=generator)
        moved = torch.where(soft.view(-1, 1, 1, 1, 1), (moved * gain + noise).clamp(0.0, 1.0), moved)

        identity = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
        return moved, reference.contiguous(), (affines - identity).flatten(1)


def load_label_boundaries(
    dataset_dir: str | Path,
    max_cases: int | None = None,
    fold: int | None = None,
    num_folds: int = 5,
    split_seed: int = 0,
) -> tuple[list[Tensor], list[str]]:
    """Load the training labels listed in ``dataset_dir/dataset.json`` and return their boundary maps and paths.

    With ``fold``, only the labels of that fold's training cases are loaded, split as the training config splits
    them (:func:`scripts.data.fold_split` with ``num_folds`` and ``split_seed``).

    Raises:
        FileNotFoundError: for a missing folder or ``dataset.json``, or a file given as the folder (see
            :func:`scripts.data.read_dataset_json`).
        ValueError: for a missing label file, or a ``dataset.json`` that is invalid or lists no training cases.
    """
    dataset_dir = Path(dataset_dir).expanduser().resolve()
    manifest = dataset_dir / DATASET_JSON
    if fold is None:
        entries = read_dataset_json(dataset_dir)["training"]
    else:
        entries = fold_split(load_datalist(dataset_dir), fold, num_folds, split_seed)["training"]
    label_paths = [entry["label"] if isinstance(entry, dict) else None for entry in entries]
    label_paths = [path for path in label_paths if path]
    if not label_paths:
        raise ValueError(f"{manifest} lists no training cases with a 'label' entry; the labels are the training data.")
    if max_cases is not None:
        label_paths = label_paths[:max_cases]

    boundaries, names = [], []
    for relative in label_paths:
        path = (dataset_dir / relative).resolve()
        if not path.is_file():
            raise ValueError(f"the label file {path} listed in {manifest} does not exist.")
        labels = np.asarray(nib.load(str(path)).dataobj)
        if labels.ndim != 3:
            raise ValueError(f"{path} has {labels.ndim} dimensions; the inverse network is trained on 3D labels.")
        volume = torch.from_numpy(np.rint(labels).astype(np.int64))
        boundaries.append(label_boundary(volume, spatial_dims=3).float())
        names.append(str(path))
    return boundaries, names


def train(
    dataset_dir: str,
    output: str = DEFAULT_CHECKPOINT,
    epochs: int = 30,
    samples_per_epoch: int = 2048,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    tile_size: int = 16,
    validation_fraction: float = 0.2,
    validation_samples: int = 512,
    max_cases: int | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tracking_fallback: bool = False,
    fold: int | None = None,
    num_folds: int = 5,
    split_seed: int = 0,
) -> dict:
    """Train the InverseForm inverse network on the label boundaries of a dataset and save it.

    Args:
        dataset_dir: dataset folder with ``dataset.json`` (Decathlon layout); its training labels are used.
        output: where to save the network, absolute or relative to the bundle root.
        epochs: number of epochs.
        samples_per_epoch: tile pairs drawn per epoch.
        batch_size: tile pairs per optimisation step.
        learning_rate: Adam's learning rate.
        tile_size: tile side in voxels, a multiple of 8; the loss uses the tile size saved in the checkpoint.
        validation_fraction: share of the cases held out to measure the validation loss (at least one case each).
        validation_samples: tile pairs in the fixed validation set.
        max_cases: use only the first cases of ``dataset.json`` (a quick run).
        seed: seed of the tile sampling, the transforms and the initial weights.
        tracking_uri: MLflow tracking URI; default ``sqlite:///<bundle>/outputs/mlflow.db``.
        experiment: MLflow experiment name.
        run_name: MLflow run name; default ``inverse-form-<tile_size>``.
        tracking_fallback: when ``tracking_uri`` does not respond at the start, log into the bundle's default store
            instead of stopping.
        fold: train on the label boundaries of this fold's training cases only, so that the segmentation
            network's validation cases stay unseen; ``None`` uses every labelled case.
        num_folds: the number of folds of the split, as in the training config.
        split_seed: the seed of the split, as in the training config.

    Returns:
        a summary: checkpoint path, MLflow run id, tracking URI and the losses.

    Raises:
        ValueError: for invalid options or a dataset folder that cannot be read (see
            :func:`load_label_boundaries`).
    """
    _check_options(
        epochs, samples_per_epoch, batch_size, learning_rate, validation_fraction, validation_samples, max_cases
    )
    seed = as_int("seed", seed)
    # The store is checked before the labels are loaded: MLflow would retry an unreachable server for minutes.
    fallback_dir = Path(BUNDLE_ROOT) / "outputs" if as_bool("tracking_fallback", tracking_fallback) else None
    tracking_uri = connect(tracking_uri or default_tracking_uri(), fallback_dir=fallback_dir)
    ranges = TransformRanges()
    ranges.validate()
    torch.manual_seed(seed)
    net = InverseFormNet(tile_size=tile_size)

    boundaries, names = load_label_boundaries(dataset_dir, max_cases, fold, num_folds, split_seed)
    if len(boundaries) < 2:
        raise ValueError(
            f"training needs at least 2 label files (one held out for validation), found {len(boundaries)}."
        )
    order = torch.randperm(len(boundaries), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = min(len(boundaries) - 1, max(1, round(validation_fraction * len(boundaries))))
    validation_cases, training_cases = order[:held_out], order[held_out:]
    training = TilePairSampler([boundaries[i] for i in training_cases], tile_size, ranges)
    validation = TilePairSampler([boundaries[i] for i in validation_cases], tile_size, ranges)
    validation_pairs = validation.sample(validation_samples, torch.Generator().manual_seed(seed + 1))
    generator = torch.Generator().manual_seed(seed + 2)

    checkpoint_path = resolve_checkpoint(output)
    params = {
        "dataset_dir": str(Path(dataset_dir).expanduser().resolve()),
        "training_cases": len(training_cases),
        "validation_cases": len(validation_cases),
        "epochs": epochs,
        "samples_per_epoch": samples_per_epoch,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "tile_size": tile_size,
        "validation_samples": validation_samples,
        "seed": seed,
        "fold": "all cases" if fold is None else fold,
        **{f"transform.{key}": value for key, value in asdict(ranges).items()},
        **{f"net.{key}": value for key, value in net.config().items()},
    }

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    _ensure_experiment(mlflow, experiment, tracking_uri)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    steps = max(1, samples_per_epoch // batch_size)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    with mlflow.start_run(run_name=run_name or f"inverse-form-{tile_size}") as run:
        mlflow.log_params(params)
        initial = _validation_loss(net, validation_pairs)
        mlflow.log_metric("val_loss", initial, step=0)
        logger.info(
            "InverseForm inverse network: %d training and %d validation cases, validation loss %.5f before training.",
            len(training_cases),
            len(validation_cases),
            initial,
        )
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            net.train()
            total = 0.0
            for _ in range(steps):
                moved, reference, target = training.sample(batch_size, generator)
                loss = F.mse_loss(net(moved, reference), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            train_loss = total / steps
            val_loss = _validation_loss(net, validation_pairs)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            mlflow.log_metrics({"train_loss": train_loss, "val_loss": val_loss}, step=epoch)
            logger.info(
                "epoch %d/%d: train loss %.5f, validation loss %.5f (%.1f s)",
                epoch,
                epochs,
                train_loss,
                val_loss,
                time.perf_counter() - started,
            )

        metadata = {"mlflow_run_id": run.info.run_id, "final_val_loss": history["val_loss"][-1], **params}
        save_inverse_form_net(net.eval(), checkpoint_path, metadata)
        mlflow.log_artifact(str(checkpoint_path))
        logger.info("saved the inverse network to %s (MLflow run %s).", checkpoint_path, run.info.run_id)

    return {
        "checkpoint": str(checkpoint_path),
        "run_id": run.info.run_id,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "initial_val_loss": initial,
        **{key: values[-1] for key, values in history.items()},
    }


def _validation_loss(net: InverseFormNet, pairs: tuple[Tensor, Tensor, Tensor]) -> float:
    moved, reference, target = pairs
    net.eval()
    with torch.no_grad():
        return float(F.mse_loss(net(moved, reference), target))


def _ensure_experiment(mlflow, name: str, tracking_uri: str) -> None:
    """Create the experiment if needed; with a SQLite store, artifacts go next to the database file."""
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if tracking_uri.startswith("sqlite:///"):
            database = Path(tracking_uri[len("sqlite:///") :])
            database.parent.mkdir(parents=True, exist_ok=True)
            artifact_location = (database.parent / "mlartifacts").as_uri()
        mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)


def _check_options(
    epochs, samples_per_epoch, batch_size, learning_rate, validation_fraction, validation_samples, max_cases
) -> None:
    for name, value in (
        ("epochs", epochs),
        ("samples_per_epoch", samples_per_epoch),
        ("batch_size", batch_size),
        ("validation_samples", validation_samples),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if samples_per_epoch < batch_size:
        raise ValueError(
            f"samples_per_epoch ({samples_per_epoch}) must be at least batch_size ({batch_size}); an epoch is "
            "samples_per_epoch // batch_size steps."
        )
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}.")
    if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 2):
        raise ValueError(f"max_cases must be an integer of at least 2 (one case is held out), got {max_cases!r}.")


def main() -> None:
    # Timestamps on the epoch lines; run_commands's own logging setup then leaves this one in place.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_commands({"train": train})


if __name__ == "__main__":
    main()
