"""The settings of a loss study: presets, the (loss, seed, fold) grid, shards and the settings key of each run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from .. import BUNDLE_ROOT
from ..cli import innermost_cause
from ..data import read_dataset_json
from ..losses import get_loss_spec, list_losses
from ..options import as_int

logger = logging.getLogger(__name__)

CONFIGS = Path(BUNDLE_ROOT) / "configs"
TRAIN_CONFIG = CONFIGS / "train.yaml"
EVALUATE_CONFIG = CONFIGS / "evaluate.yaml"
DEFAULT_OVERLAY_DIR = CONFIGS / "losses"
DEFAULT_REFERENCE = "combo"  # the training config's default loss

# Part of every settings key. Raise it when the training or evaluation protocol changes in a way that makes
# earlier results incomparable (a new metric, another empty-mask convention), so that a rerun repeats every run.
PROTOCOL_VERSION = 1

# Config keys that the study sets for every run; `overrides` must leave them alone.
STUDY_KEYS = frozenset(
    {
        "dataset_dir",
        "fold",
        "num_folds",
        "seed",
        "max_epochs",
        "val_interval",
        "max_cases",
        "loss",
        "output_dir",
        "ckpt_dir",
        "tracking_uri",
        "experiment_name",
        "tracking_tags",
        "parent_run_id",
        "eval_output_dir",
        "eval_run_id",
        "eval_dataset_dir",
        "ckpt_path",
        "surface_tolerance",
        "run_name",
    }
)


@dataclass(frozen=True)
class Preset:
    """A budget: which seeds and folds to run and how long to train; ``None`` keeps the training config's value."""

    name: str
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    max_epochs: int | None
    val_interval: int | None
    description: str


PRESETS = {
    # Sized for the 27 registered losses in an estimated 2.5 hours on a 2-core CPU. A run of the default config there
    # took about 45 s of start-up and caching, 25 to 35 s per epoch on the 166 training cases, 4 s per validation
    # of the 42 held-out cases and 20 s of evaluation (2 epochs, measured as docs/study.md describes).
    "quick": Preset(
        name="quick",
        seeds=(0,),
        folds=(0,),
        max_epochs=10,
        val_interval=2,
        description="1 seed x 1 fold, 10 epochs with validation every 2: an estimated 5 min per loss on 2 CPU cores",
    ),
    "full": Preset(
        name="full",
        seeds=(0, 1, 2),
        folds=(0, 1, 2, 3, 4),
        max_epochs=None,
        val_interval=None,
        description="3 seeds x 5 folds with the training config's epochs: for a GPU",
    ),
}


@dataclass(frozen=True, order=True)
class RunSpec:
    """One cell of the grid: a loss overlay, a training seed and a validation fold; sorted in that order."""

    loss: str
    seed: int
    fold: int

    @property
    def name(self) -> str:
        return f"{self.loss}-fold{self.fold}-seed{self.seed}"


@dataclass(frozen=True)
class StudySettings:
    """Everything that defines a study's runs; built and checked by :meth:`create`.

    ``losses`` are the names of overlays in ``overlay_dir`` (by default the registered losses, whose overlays carry
    their names). ``max_epochs`` and ``val_interval`` are resolved: the preset's or the user's value, else the
    training config's.
    """

    study_name: str
    preset: str
    losses: tuple[str, ...]
    reference: str
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    num_folds: int
    max_epochs: int
    val_interval: int
    max_cases: int | None
    overrides: Mapping[str, Any]
    dataset_dir: str
    dataset_name: str
    dataset_sha256: str
    overlay_dir: str
    surface_tolerance: float
    experiment_name: str

    @classmethod
    def create(
        cls,
        preset: str = "quick",
        losses: str | Sequence[str] | None = None,
        reference: str | None = None,
        seeds: int | str | Sequence[int] | None = None,
        folds: int | str | Sequence[int] | None = None,
        num_folds: int = 5,
        max_epochs: int | None = None,
        val_interval: int | None = None,
        max_cases: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        dataset_dir: str | Path = f"{BUNDLE_ROOT}/data/Task04_Hippocampus",
        overlay_dir: str | Path | None = None,
        surface_tolerance: float = 1.0,
        study_name: str | None = None,
        experiment_name: str = "seglosses-study",
    ) -> StudySettings:
        """Check the options and resolve them against the preset and the training config.

        Raises:
            ValueError: for an unknown preset, loss or reference, a loss overlay that names no registered loss,
                bad seeds or folds, epochs below 1, or an override of a key the study sets itself.
            FileNotFoundError: for a missing dataset folder or ``dataset.json``, or a missing overlay folder.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        chosen = PRESETS[preset]
        overlay_folder = Path(overlay_dir or DEFAULT_OVERLAY_DIR).expanduser().resolve()
        if not overlay_folder.is_dir():
            raise FileNotFoundError(
                f"overlay folder {overlay_folder} not found; pass --overlay_dir with a folder "
                "of loss overlays (NAME.yaml), or leave it out to use configs/losses."
            )
        names = _names(losses) if losses is not None else _default_losses(overlay_folder)
        for name in names:
            _check_overlay(overlay_folder, name)
        if reference is None:
            reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in names else names[0]
            if reference != DEFAULT_REFERENCE:
                logger.info(
                    "The reference loss is %s, the first of the losses, because %s is not among them.",
                    reference,
                    DEFAULT_REFERENCE,
                )
        elif reference not in names:
            raise ValueError(
                f"reference loss {reference!r} is not among the study's losses ({', '.join(names)}); "
                "pass --reference with one of them."
            )

        num_folds = as_int("num_folds", num_folds, minimum=2)
        seed_list = _integers(seeds, "seeds") if seeds is not None else chosen.seeds
        fold_list = _integers(folds, "folds") if folds is not None else chosen.folds
        for seed in seed_list:
            if seed < 0:
                raise ValueError(f"seeds must be integers >= 0, got {seed}.")
        for fold in fold_list:
            if not 0 <= fold < num_folds:
                raise ValueError(f"folds must lie in [0, {num_folds - 1}] for num_folds {num_folds}, got {fold}.")

        defaults = yaml.safe_load(TRAIN_CONFIG.read_text(encoding="utf-8"))
        epochs = _first(max_epochs, chosen.max_epochs, defaults["max_epochs"])
        interval = _first(val_interval, chosen.val_interval, defaults["val_interval"])
        for label, value in (("max_epochs", epochs), ("val_interval", interval)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an integer >= 1, got {value!r}.")
        if max_cases is not None and (not isinstance(max_cases, int) or max_cases < 1):
            raise ValueError(f"max_cases must be an integer >= 1 or None, got {max_cases!r}.")
        overrides = dict(overrides or {})
        if not isinstance(overrides, dict):
            raise ValueError(f"overrides must be a mapping of config keys to values, got {overrides!r}.")
        # The runs read their settings from an args file, which the command-line check does not read, so a mistyped key
        # would be ignored. Only the part before the first '#' is checked, because the loss checks its own options.
        unknown = sorted(key for key in overrides if key.split("#")[0] not in defaults)
        if unknown:
            raise ValueError(
                f"overrides name settings that configs/train.yaml does not define: {', '.join(unknown)}. Check "
                "their spelling against the top of configs/train.yaml."
            )
        losses_set = sorted(key for key in overrides if key.split("#")[0] == "loss")
        if losses_set:
            raise ValueError(
                f"overrides may not set {', '.join(losses_set)}: each run's loss comes from its overlay. To change a "
                "loss's option, copy its overlay from configs/losses/ into a folder, edit it there, and pass the "
                "folder as --overlay_dir."
            )
        clashing = sorted(key for key in overrides if key.split("#")[0] in STUDY_KEYS)
        if clashing:
            raise ValueError(
                f"overrides may not set {', '.join(clashing)}: the study sets these keys itself. Use the study's own "
                "options instead."
            )
        _check_override_values(overrides)
        if isinstance(surface_tolerance, bool) or not (
            isinstance(surface_tolerance, (int, float)) and surface_tolerance > 0
        ):
            raise ValueError(f"surface_tolerance must be a positive distance in mm, got {surface_tolerance!r}.")

        dataset_folder = Path(dataset_dir).expanduser().resolve()
        content = read_dataset_json(dataset_folder)
        dataset_json = (dataset_folder / "dataset.json").read_bytes()
        return cls(
            study_name=study_name or preset,
            preset=preset,
            losses=tuple(names),
            reference=reference,
            seeds=tuple(seed_list),
            folds=tuple(fold_list),
            num_folds=num_folds,
            max_epochs=epochs,
            val_interval=interval,
            max_cases=max_cases,
            overrides=overrides,
            dataset_dir=str(dataset_folder),
            dataset_name=str(content.get("name", dataset_folder.name)),
            dataset_sha256=hashlib.sha256(dataset_json).hexdigest(),
            overlay_dir=str(overlay_folder),
            surface_tolerance=float(surface_tolerance),
            experiment_name=experiment_name,
        )

    def grid(self) -> list[RunSpec]:
        """Return every run of the study, sorted by loss, seed and fold, so every machine gets the same order."""
        return sorted(RunSpec(loss, seed, fold) for loss in self.losses for seed in self.seeds for fold in self.folds)

    def shard(self, index: int, count: int) -> list[RunSpec]:
        """Return the runs of shard ``index`` of ``count``: every ``count``-th run of the grid from ``index``."""
        return [spec for position, spec in enumerate(self.grid()) if position % count == index]

    def overlay_path(self, loss: str) -> Path:
        return Path(self.overlay_dir) / f"{loss}.yaml"

    def settings_key(self, spec: RunSpec) -> str:
        """Return the hash that identifies a run's settings; a finished run with the same key is reused.

        It covers what changes a run's result: the overlay's name and content, seed, fold and number of folds,
        epochs, validation interval, case limit, config overrides, the dataset's ``dataset.json``, the surface
        Dice tolerance and :data:`PROTOCOL_VERSION`. It leaves out the paths, the tracking URI, the hardware and
        the git commit: a rerun after a commit that does not touch these settings reuses the finished runs (each
        run records its commit, and the report lists them).
        """
        content = {
            "protocol": PROTOCOL_VERSION,
            "loss": spec.loss,
            "overlay_sha256": hashlib.sha256(self.overlay_path(spec.loss).read_bytes()).hexdigest(),
            "seed": spec.seed,
            "fold": spec.fold,
            "num_folds": self.num_folds,
            "max_epochs": self.max_epochs,
            "val_interval": self.val_interval,
            "max_cases": self.max_cases,
            "overrides": dict(self.overrides),
            "dataset_sha256": self.dataset_sha256,
            "surface_tolerance": self.surface_tolerance,
        }
        text = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def registered_loss(self, loss: str) -> str:
        """Return the registered name of the loss that the overlay ``loss`` builds."""
        return _overlay_loss_name(self.overlay_path(loss))

    def loss_family(self, loss: str) -> str:
        """Return the family of the registered loss that the overlay ``loss`` builds."""
        return get_loss_spec(self.registered_loss(loss)).family

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StudySettings:
        content = json.loads(text)
        for key in ("losses", "seeds", "folds"):
            content[key] = tuple(content[key])
        return cls(**content)


def parse_shard(shard: str | int | Sequence[int]) -> tuple[int, int]:
    """Parse ``"i/n"`` into ``(i, n)`` with ``0 <= i < n``.

    Raises:
        ValueError: for any other form, naming the value.
    """
    text = str(shard).strip()
    parts = text.split("/")
    try:
        index, count = (int(part) for part in parts)
    except ValueError:
        index, count = -1, 0
    if len(parts) != 2 or count < 1 or not 0 <= index < count:
        raise ValueError(
            f"invalid shard {shard!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4 for the first of "
            "4 shards (0/1 runs the whole grid)."
        )
    return index, count


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise ValueError(f"no loss named in {value!r}; pass loss names, e.g. --losses dice,combo.")
    if len(set(names)) != len(names):
        raise ValueError(f"a loss is named twice in {value!r}; name each loss once.")
    return names


def _integers(value: int | str | Sequence[int], label: str) -> list[int]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        numbers = [int(str(item).strip()) for item in items]
    except ValueError as error:
        raise ValueError(f"{label} must be integers, e.g. --{label} 0,1,2; got {value!r}.") from error
    if not numbers or len(set(numbers)) != len(numbers):
        raise ValueError(f"{label} must list distinct integers, e.g. --{label} 0,1,2; got {value!r}.")
    return numbers


def _check_override_values(overrides: dict[str, Any]) -> None:
    """Raise ``ValueError`` when an override gives a training setting a value of the wrong kind.

    The training config's own check (``settings_check``) runs on the overridden settings here, so that a wrong
    value stops the study before its first run instead of failing every run.
    """
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    for key, value in overrides.items():
        if "#" not in key:
            parser[key] = value
    try:
        parser.get_parsed_content("settings_check")
    except Exception as error:  # noqa: BLE001 - MONAI wraps the check's ValueError in a RuntimeError
        raise ValueError(f"overrides: {innermost_cause(error)}") from error


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def _default_losses(overlay_dir: Path) -> list[str]:
    if overlay_dir == DEFAULT_OVERLAY_DIR.resolve():
        return [spec.name for spec in list_losses()]
    names = sorted(path.stem for path in overlay_dir.glob("*.yaml"))
    if not names:
        raise FileNotFoundError(
            f"no loss overlay (*.yaml) found in {overlay_dir}; pass --losses or another --overlay_dir."
        )
    return names


def _check_overlay(overlay_dir: Path, name: str) -> None:
    path = overlay_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(item.stem for item in overlay_dir.glob("*.yaml")))
        raise ValueError(
            f"unknown loss {name!r}: no overlay {path}. Losses with an overlay: {known}. "
            "`python -m scripts.losses list` lists the registered losses."
        )
    get_loss_spec(_overlay_loss_name(path))


def _overlay_loss_name(path: Path) -> str:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"loss overlay {path} is not valid YAML ({error}); fix the file.") from error
    loss = content.get("loss") if isinstance(content, dict) else None
    name = loss.get("name") if isinstance(loss, dict) else None
    # An overlay that trains a loss inside a combination files its runs under loss_name (the boundary overlay).
    if isinstance(content, dict) and isinstance(content.get("loss_name"), str):
        name = content["loss_name"]
    if not isinstance(name, str):
        raise ValueError(
            f"loss overlay {path} has no `loss: {{name: ...}}` entry; every overlay replaces the "
            "config's `loss` with a registered loss, as configs/losses/dice.yaml does."
        )
    return name
