"""Training wrappers: heads on the decoder features, plain logits in eval mode, backbone checkpoint unchanged."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from scripts.losses import build_loss
from scripts.losses.boundary.boundary_aware import example_extra_inputs as boundary_aware_inputs
from scripts.networks import (
    AuxiliaryHeadNetwork,
    BoundaryAwareNetwork,
    BoundaryHeadNetwork,
    ConditionalBoundaryNetwork,
    find_output_block,
)

PATCH = (2, 1, 24, 16, 16)


def small_unet(out_channels: int = 3, num_res_units: int = 1) -> UNet:
    torch.manual_seed(0)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=[8, 16],
        strides=[2],
        num_res_units=num_res_units,
        norm="instance",
    )


def image() -> torch.Tensor:
    return torch.randn(PATCH, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("wrapper", "key", "channels"),
    [
        (lambda net: BoundaryAwareNetwork(net, num_bins=4), "distance_bin_logits", 3 * 4),
        (BoundaryHeadNetwork, "boundary_logits", 1),
        (ConditionalBoundaryNetwork, "features", 3),
    ],
)
def test_wrapper_train_mode_returns_dict(wrapper, key, channels):
    network = wrapper(small_unet())
    network.train()
    output = network(image())

    assert set(output) >= {"logits", key}
    assert output["logits"].shape == (2, 3, *PATCH[2:])
    assert output[key].shape == (2, channels, *PATCH[2:])


@pytest.mark.parametrize("wrapper", [BoundaryAwareNetwork, BoundaryHeadNetwork, ConditionalBoundaryNetwork])
def test_wrapper_eval_mode_returns_backbone_logits(wrapper):
    backbone = small_unet()
    network = wrapper(backbone)
    network.eval()
    backbone.eval()
    x = image()

    output = network(x)

    assert isinstance(output, torch.Tensor)
    torch.testing.assert_close(output, backbone(x))


def test_unet_output_block_is_residual_unit():
    network = BoundaryHeadNetwork(small_unet())

    assert network.output_block_name == "model.2.1"
    assert type(network.output_block).__name__ == "ResidualUnit"
    assert network.feature_channels == 3


def test_classifier_maps_features_to_logits():
    network = ConditionalBoundaryNetwork(small_unet())
    network.train()
    output = network(image())

    torch.testing.assert_close(output["classifier"](output["features"]), output["logits"])


def test_backbone_state_dict_loads_into_plain_unet():
    network = BoundaryAwareNetwork(small_unet())
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    output = network(image())
    (output["logits"].mean() + output["distance_bin_logits"].mean()).backward()
    optimizer.step()

    plain = small_unet()
    plain.load_state_dict(network.backbone.state_dict())
    plain.eval()
    network.eval()
    x = image()

    assert not any(key.startswith("distance_bin_head") for key in network.backbone.state_dict())
    torch.testing.assert_close(plain(x), network(x), rtol=0, atol=0)


def test_backbone_scripts_and_traces():
    network = BoundaryAwareNetwork(small_unet())
    network.train()
    network(image())["distance_bin_logits"].sum().backward()
    backbone = network.backbone.eval()
    x = image()

    scripted = torch.jit.script(backbone)
    traced = torch.jit.trace(backbone, x)

    torch.testing.assert_close(scripted(x), backbone(x))
    torch.testing.assert_close(traced(x), backbone(x))


def test_no_hook_left_on_backbone():
    network = BoundaryHeadNetwork(small_unet())
    network.train()
    network(image())

    assert all(not module._forward_pre_hooks and not module._forward_hooks for module in network.backbone.modules())


def test_gradients_reach_boundary_aware_head():
    network = BoundaryAwareNetwork(small_unet(), num_bins=6)
    network.train()
    labels = torch.zeros(2, 1, *PATCH[2:], dtype=torch.long)
    labels[:, :, 6:18, 4:12, 4:12] = 1
    labels[:, :, 10:14, 6:10, 6:10] = 2
    output = network(image())
    bins = boundary_aware_inputs(output["logits"].detach(), labels)["distance_bins"]
    loss = build_loss("boundary_aware", cross_entropy_weight=0.0)

    loss(output["logits"], labels, distance_bin_logits=output["distance_bin_logits"], distance_bins=bins).backward()

    head_gradient = sum(float(p.grad.abs().sum()) for p in network.distance_bin_head.parameters())
    backbone_gradient = sum(float(p.grad.abs().sum()) for p in network.backbone.parameters() if p.grad is not None)
    assert head_gradient > 0
    assert backbone_gradient > 0, "the depth-bin loss also trains the shared decoder"


def test_gradients_reach_boundary_head():
    network = BoundaryHeadNetwork(small_unet())
    network.train()
    network(image())["boundary_logits"].square().mean().backward()

    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.boundary_head.parameters())


def test_single_channel_backbone_bins():
    network = BoundaryAwareNetwork(small_unet(out_channels=1), num_bins=3)
    network.train()

    assert network(image())["distance_bin_logits"].shape == (2, 3, *PATCH[2:])


def test_explicit_output_block_name():
    network = BoundaryHeadNetwork(small_unet(), output_block="model.2.1")
    network.train()

    assert network(image())["boundary_logits"].shape == (2, 1, *PATCH[2:])


def test_unknown_output_block_name_raises():
    with pytest.raises(ValueError, match="no module named 'model.9'"):
        BoundaryHeadNetwork(small_unet(), output_block="model.9")


def test_widest_features_are_upsampled_for_the_head():
    network = BoundaryAwareNetwork(small_unet(), num_bins=4, widest_features=True)
    network.train()

    outputs = network(torch.zeros(2, 1, 16, 16, 16))

    assert network.output_block_name == "model.2"
    assert network.feature_channels > 3
    assert outputs["distance_bin_logits"].shape == (2, 3 * 4, 16, 16, 16)
    assert set(network.state_dict()) - {f"backbone.{key}" for key in small_unet().state_dict()} == {
        f"distance_bin_head.{key}" for key in network.distance_bin_head.state_dict()
    }


def test_output_block_at_lower_resolution_raises():
    # Without residual units MONAI's UNet ends in a strided transposed convolution: its input is half resolution.
    with pytest.raises(ValueError, match="num_res_units >= 1"):
        BoundaryHeadNetwork(small_unet(num_res_units=0))


def test_plain_backbone_needs_probe_shape():
    backbone = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.PReLU(), nn.Conv3d(4, 2, 1))

    with pytest.raises(ValueError, match="pass probe_shape"):
        BoundaryHeadNetwork(backbone)
    network = BoundaryHeadNetwork(backbone, probe_shape=(1, 1, 8, 8, 8))

    assert network.output_block_name == "2"
    assert network.feature_channels == 4


def test_invalid_probe_shape_raises():
    with pytest.raises(ValueError, match="probe_shape"):
        BoundaryHeadNetwork(small_unet(), probe_shape=(1, 1))


def test_invalid_head_options_raise():
    with pytest.raises(ValueError, match="num_bins must be an integer of at least 2, got 1"):
        BoundaryAwareNetwork(small_unet(), num_bins=1)
    with pytest.raises(ValueError, match="head_channels"):
        BoundaryHeadNetwork(small_unet(), head_channels=0)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        AuxiliaryHeadNetwork("unet")


def test_output_built_outside_modules_raises():
    class Doubling(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1)

        def forward(self, x):
            return 2 * self.conv(x)

    with pytest.raises(ValueError, match="output_block"):
        find_output_block(Doubling(), torch.zeros(1, 1, 4, 4, 4))
