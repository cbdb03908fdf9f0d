"""The glue between MONAI's trainer and the losses."""

from __future__ import annotations

import pytest
import torch

from scripts.engine import LossAdapter, SegmentationPrepareBatch, trainable_parameters
from scripts.losses import build_loss


def test_trainable_parameters_include_the_loss_without_decay():
    network = torch.nn.Conv3d(1, 3, 1)
    loss = LossAdapter(build_loss("robust_t"))

    groups = trainable_parameters(network, loss)
    optimizer = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)

    assert len(groups) == 2
    assert groups[1]["params"][0] is loss.loss.nu_tilde
    assert optimizer.param_groups[0]["weight_decay"] == 0.5
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_trainable_parameters_of_a_plain_loss():
    network = torch.nn.Conv3d(1, 3, 1)

    groups = trainable_parameters(network, LossAdapter(build_loss("dice")))

    assert len(groups) == 1
    assert len(groups[0]["params"]) == 2


def test_optimizer_step_trains_the_loss_parameter():
    network = torch.nn.Conv3d(1, 3, 1)
    loss = LossAdapter(build_loss("robust_t"))
    optimizer = torch.optim.AdamW(trainable_parameters(network, loss), lr=0.1)
    before = loss.loss.nu_tilde.item()

    value = loss(network(torch.randn(2, 1, 4, 4, 4)), torch.randint(0, 3, (2, 1, 4, 4, 4)))
    value.backward()
    optimizer.step()

    assert loss.loss.nu_tilde.item() != before


def test_adapter_unpacks_head_outputs_and_batch_keys():
    class NeedsExtras(torch.nn.Module):
        extra_inputs = ("distance_map", "boundary_logits")
        registry_name = "toy"

        def forward(self, logits, target, distance_map, boundary_logits):
            return logits.sum() * 0 + distance_map.sum() + boundary_logits.sum()

    adapter = LossAdapter(NeedsExtras())
    prediction = {"logits": torch.zeros(1, 2, 2, 2), "boundary_logits": torch.ones(1, 1, 2, 2)}
    target = {"label": torch.zeros(1, 1, 2, 2), "distance_map": torch.full((1, 2, 2, 2), 2.0)}

    assert adapter(prediction, target).item() == 4 + 16

    with pytest.raises(KeyError, match="needs \\['distance_map'\\].*overlay"):
        adapter(prediction, torch.zeros(1, 1, 2, 2))


def test_prepare_batch_packs_extra_keys():
    batch = {"image": torch.zeros(1, 1, 2, 2), "label": torch.ones(1, 1, 2, 2), "distance_map": torch.ones(1, 2, 2, 2)}

    image, target = SegmentationPrepareBatch(extra_keys=["distance_map"])(batch, device="cpu")

    assert image.shape == (1, 1, 2, 2)
    assert set(target) == {"label", "distance_map"}
    with pytest.raises(KeyError, match="loss_transforms"):
        SegmentationPrepareBatch(extra_keys=["boundary_bins"])(batch, device="cpu")
    plain_image, plain_label = SegmentationPrepareBatch()(batch, device="cpu")
    assert torch.equal(plain_label, batch["label"])
