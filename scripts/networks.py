"""Training-only wrappers that add the auxiliary heads some boundary losses need to a segmentation backbone.

In training mode a wrapper returns ``{"logits": seg_logits, "<extra>": tensor, ...}``; the training engine passes
every entry besides ``logits`` to the loss as a keyword argument. In eval mode it returns the backbone's logits
unchanged. The backbone stays a submodule named ``backbone`` and is untouched, so its state dict (the checkpoint
the bundle saves) loads into the plain inference network, and the heads are dropped after training.

Where the decoder features come from
------------------------------------
A wrapper reads the input of the backbone's *output block*: the innermost module whose output is the network's
output tensor itself. It is found once, at construction, by running the backbone on a small probe input with a
forward hook on every submodule (the hook of the innermost module fires first). This works for any backbone
without naming its layers, and it picks the features that map voxel for voxel onto the logits, at their
resolution, which every head here needs. For a network that ends in a 1x1x1 convolution, the output block is that
convolution and the features are the last decoder features. For MONAI's ``UNet`` with residual units, the output
block is the last ``ResidualUnit`` (``x + conv3x3x3(x)``, no norm or activation). Its input is the output of the
last transposed convolution, normalised and activated, with ``out_channels`` channels, because MONAI's UNet has no
wider feature map at full resolution. ``widest_features=True`` reads the widest input among the blocks that return
the output instead (for that UNet, the 32 channels at half resolution that enter the last up-sampling block) and
interpolates it to the logits' resolution: the head then has its own features rather than the 3 channels it
shares with the segmentation.

A forward pre-hook on the output block captures the features. It is registered for the duration of each training
forward pass only, so the backbone carries no hook at any other time and ``torch.jit.script`` of it still works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import as_bool

__all__ = [
    "AuxiliaryHeadNetwork",
    "BoundaryAwareNetwork",
    "BoundaryHeadNetwork",
    "ConditionalBoundaryNetwork",
    "find_output_block",
]


def find_output_block(backbone: nn.Module, example_input: Tensor, widest: bool = False) -> tuple[str, Tensor, Tensor]:
    """Return the name of the innermost module of ``backbone`` whose output is the network's output, its input and
    the network's output, from one forward pass on ``example_input``.

    With ``widest``, return among those modules the one whose input has the most channels instead (the innermost
    of equals), whatever its resolution.

    Raises:
        ValueError: when no submodule returns the network's output tensor (the output is built outside any
            module), or when that module's input is not a tensor.
    """
    calls: list[tuple[str, object, object]] = []

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            calls.append((name, args[0] if args else None, output))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in backbone.named_modules() if name]
    try:
        output = backbone(example_input)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, Tensor):
        raise ValueError(
            f"the backbone returned {type(output).__name__}, not a logits tensor; wrap a network whose forward "
            "returns the segmentation logits."
        )
    candidates = [(name, block_input) for name, block_input, block_output in calls if block_output is output]
    if widest:
        candidates = sorted(
            [item for item in candidates if isinstance(item[1], Tensor) and item[1].ndim == output.ndim],
            key=lambda item: -item[1].shape[1],
        )
    for name, block_input in candidates:
        if not isinstance(block_input, Tensor):
            raise ValueError(f"the output block {name!r} of the backbone does not take a tensor as input.")
        return name, block_input, output
    raise ValueError(
        "no submodule of the backbone returns the network's output tensor, so its output block cannot be found; "
        "pass output_block='<module name>' naming the module that maps the decoder features to the logits."
    )


class AuxiliaryHeadNetwork(nn.Module):
    """Base wrapper: captures the input of the backbone's output block and adds heads computed from it.

    Subclasses build their heads in :meth:`build_heads` and compute their outputs in :meth:`head_outputs`.

    NOTE: in the bundle's MONAI UNet the innermost output block is the last residual unit, whose input has only
    ``out_channels`` (3) channels. The conditional boundary loss, which needs features that the classifier maps voxel
    for voxel onto the logits, works from those 3 channels; this is the likely reason why it segments worse than
    the other losses in ``docs/results.md``. The heads of ``boundary_aware`` use ``widest_features`` for that reason.

    Args:
        backbone: the segmentation network (for example ``monai.networks.nets.UNet``).
        output_block: name of the module that maps the decoder features to the logits (as in
            ``backbone.named_modules()``). ``None`` finds it with a probe forward pass (see the module docstring).
        probe_shape: input shape ``(1, in_channels, *spatial)`` of the probe pass. ``None`` derives it from the
            backbone's ``in_channels``, ``dimensions``/``spatial_dims`` and ``strides`` attributes (MONAI networks
            have them): each spatial size is four times the product of the strides, or 32.
        widest_features: read the widest input among the blocks that return the network's output (for MONAI's
            UNet, the 32 channels at half resolution that enter ``model.2``) instead of the innermost block's, and
            interpolate it to the logits' resolution before the heads.

    Raises:
        ValueError: when the probe shape cannot be derived, when the named output block does not exist, or when
            the features do not have the logits' spatial size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        output_block: str | None = None,
        probe_shape: Sequence[int] | None = None,
        widest_features: bool = False,
    ) -> None:
        super().__init__()
        self.widest_features = as_bool("widest_features", widest_features)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone
        probe = torch.zeros(_probe_shape(backbone, probe_shape), device=_module_device(backbone))

        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                if output_block is None:
                    found_name, features, logits = find_output_block(backbone, probe, widest=self.widest_features)
                else:
                    found_name = output_block
                    features, logits = _block_input_and_output(backbone, output_block, probe)
        finally:
            backbone.train(was_training)

        if features.shape[2:] != logits.shape[2:] and not self.widest_features:
            raise ValueError(
                f"the input of the output block {found_name!r} has spatial shape {tuple(features.shape[2:])}, but the "
                f"logits have {tuple(logits.shape[2:])}; the heads need features at the logits' resolution. Pass "
                "output_block naming a module whose input has the logits' resolution (for MONAI's UNet, build it "
                "with num_res_units >= 1)."
            )
        self.output_block_name = found_name
        self.feature_channels = int(features.shape[1])
        self.num_channels = int(logits.shape[1])
        self.spatial_dims = logits.ndim - 2
        self.build_heads()

    @property
    def output_block(self) -> nn.Module:
        """The backbone's module that maps the decoder features to the logits."""
        return self.backbone.get_submodule(self.output_block_name)

    def build_heads(self) -> None:
        """Create the head modules (a subclass sets them as attributes, so their parameters train)."""

    def head_outputs(self, features: Tensor, logits: Tensor) -> dict[str, object]:
        """Return the extra outputs of a training forward pass, computed from the captured features."""
        return {}

    def forward(self, x: Tensor) -> Tensor | dict[str, object]:
        if not self.training:
            return self.backbone(x)
        captured: list[Tensor] = []
        handle = self.output_block.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits = self.backbone(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"the output block {self.output_block_name!r} did not run in the backbone's forward.")
        features = captured[-1]
        if features.shape[2:] != logits.shape[2:]:
            mode = ("linear", "bilinear", "trilinear")[self.spatial_dims - 1]
            features = F.interpolate(features, size=logits.shape[2:], mode=mode, align_corners=False)
        return {"logits": logits, **self.head_outputs(features, logits)}


class BoundaryAwareNetwork(AuxiliaryHeadNetwork):
    """Adds the distance-bin head of the ``boundary_aware`` loss: ``num_bins`` logits per output channel.

    Training output: ``{"logits": (B, C, *spatial), "distance_bin_logits": (B, C * num_bins, *spatial)}``, where
    channels ``c * num_bins`` to ``(c + 1) * num_bins - 1`` score the depth bins of class ``c`` (of the foreground
    with a single sigmoid channel).

    Args:
        backbone: the segmentation network.
        num_bins: depth bins per class, equal to the loss's and the transform's ``num_bins``.
        head_channels: width of the head's hidden layer.
        output_block: see :class:`AuxiliaryHeadNetwork`.
        probe_shape: see :class:`AuxiliaryHeadNetwork`.
        widest_features: see :class:`AuxiliaryHeadNetwork`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_bins: int = 6,
        head_channels: int = 16,
        output_block: str | None = None,
        probe_shape: Sequence[int] | None = None,
        widest_features: bool = False,
    ) -> None:
        _check_positive_int("num_bins", num_bins, minimum=2)
        _check_positive_int("head_channels", head_channels)
        self.num_bins = num_bins
        self.head_channels = head_channels
        super().__init__(backbone, output_block, probe_shape, widest_features)

    def build_heads(self) -> None:
        self.distance_bin_head = conv_head(
            self.spatial_dims, self.feature_channels, self.head_channels, self.num_channels * self.num_bins
        )

    def head_outputs(self, features: Tensor, logits: Tensor) -> dict[str, object]:
        return {"distance_bin_logits": self.distance_bin_head(features)}


class BoundaryHeadNetwork(AuxiliaryHeadNetwork):
    """Adds the class-agnostic boundary head of the ``inverse_form`` loss: one boundary logit per voxel.

    Training output: ``{"logits": (B, C, *spatial), "boundary_logits": (B, 1, *spatial)}``.

    Args:
        backbone: the segmentation network.
        head_channels: width of the head's hidden layer.
        output_block: see :class:`AuxiliaryHeadNetwork`.
        probe_shape: see :class:`AuxiliaryHeadNetwork`.
        widest_features: see :class:`AuxiliaryHeadNetwork`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head_channels: int = 16,
        output_block: str | None = None,
        probe_shape: Sequence[int] | None = None,
        widest_features: bool = False,
    ) -> None:
        _check_positive_int("head_channels", head_channels)
        self.head_channels = head_channels
        super().__init__(backbone, output_block, probe_shape, widest_features)

    def build_heads(self) -> None:
        self.boundary_head = conv_head(self.spatial_dims, self.feature_channels, self.head_channels, 1)

    def head_outputs(self, features: Tensor, logits: Tensor) -> dict[str, object]:
        return {"boundary_logits": self.boundary_head(features)}


class ConditionalBoundaryNetwork(AuxiliaryHeadNetwork):
    """Exposes the decoder features and the segmentation classifier that the ``conditional_boundary`` loss needs.

    It adds no parameters. Training output: ``{"logits": ..., "features": (B, D, *spatial), "classifier":
    output_block}``, where ``classifier`` is the backbone's output block, a module that maps a feature map to
    logits (``classifier(features) == logits``). The loss calls it with its parameters detached, as the official
    code does, so it trains the features and not the classifier.
    """

    def head_outputs(self, features: Tensor, logits: Tensor) -> dict[str, object]:
        return {"features": features, "classifier": self.output_block}


def conv_head(spatial_dims: int, in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """Return a small head: 3x3(x3) convolution, instance norm, PReLU, then a 1x1(x1) convolution to the outputs."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(spatial_dims)
    norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}.get(spatial_dims)
    if conv is None:
        raise ValueError(f"heads support 1 to 3 spatial dimensions, got {spatial_dims}.")
    return nn.Sequential(
        conv(in_channels, hidden_channels, kernel_size=3, padding=1),
        norm(hidden_channels, affine=True),
        nn.PReLU(),
        conv(hidden_channels, out_channels, kernel_size=1),
    )


def _block_input_and_output(backbone: nn.Module, name: str, probe: Tensor) -> tuple[Tensor, Tensor]:
    try:
        block = backbone.get_submodule(name)
    except AttributeError as error:
        names = [module_name for module_name, _ in backbone.named_modules() if module_name][-5:]
        raise ValueError(
            f"the backbone has no module named {name!r} (its last modules are {names}); pass a name from "
            "backbone.named_modules()."
        ) from error
    captured: list[Tensor] = []
    handle = block.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        logits = backbone(probe)
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"the module {name!r} did not run in the backbone's forward pass.")
    return captured[-1], logits


def _probe_shape(backbone: nn.Module, probe_shape: Sequence[int] | None) -> tuple[int, ...]:
    if probe_shape is not None:
        shape = tuple(int(size) for size in probe_shape)
        if len(shape) < 3 or any(size < 1 for size in shape):
            raise ValueError(f"probe_shape must be (1, in_channels, *spatial) with positive sizes, got {shape}.")
        return shape
    in_channels = getattr(backbone, "in_channels", None)
    spatial_dims = getattr(backbone, "dimensions", None) or getattr(backbone, "spatial_dims", None)
    if not isinstance(in_channels, int) or not isinstance(spatial_dims, int):
        raise ValueError(
            f"cannot derive a probe input for {type(backbone).__name__} (no in_channels and dimensions/spatial_dims "
            "attributes); pass probe_shape=(1, in_channels, *spatial) with a size the backbone accepts."
        )
    strides = getattr(backbone, "strides", None)
    size = 32
    if isinstance(strides, Sequence) and strides:
        size = 4 * math.prod(int(math.prod(s)) if isinstance(s, Sequence) else int(s) for s in strides)
    return (1, in_channels, *([size] * spatial_dims))


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}.")
