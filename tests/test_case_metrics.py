"""The evaluation metrics per case and class, with the convention for classes missing from a mask."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from scripts.metrics import CaseMetric, hausdorff_95

SHAPE = (6, 6, 6)
SPACING = [2.0, 1.0, 1.0]
# Diagonal of a 6 x 6 x 6 volume of 2 x 1 x 1 mm voxels: sqrt(12^2 + 6^2 + 6^2) = sqrt(216) mm.
DIAGONAL = math.sqrt(216.0)


def one_hot(labels: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """(X, Y, Z) class indices -> (1, C, X, Y, Z) one-hot."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).permute(3, 0, 1, 2)[None].float()


def labels_with(cubes: dict[int, tuple[slice, slice, slice]]) -> torch.Tensor:
    labels = torch.zeros(SHAPE)
    for value, region in cubes.items():
        labels[region] = value
    return labels


CUBE_1 = (slice(1, 3), slice(1, 3), slice(1, 3))
CUBE_1_SHIFTED = (slice(2, 4), slice(1, 3), slice(1, 3))
CUBE_2 = (slice(3, 5), slice(3, 5), slice(3, 5))


def values(metric: str, prediction: torch.Tensor, label: torch.Tensor, **kwargs) -> list[float]:
    return CaseMetric(metric, **kwargs)(one_hot(prediction), one_hot(label), spacing=SPACING)[0].tolist()


def test_perfect_prediction_scores_best():
    label = labels_with({1: CUBE_1, 2: CUBE_2})

    assert values("dice", label, label) == pytest.approx([1.0, 1.0])
    assert values("hd95", label, label) == pytest.approx([0.0, 0.0])
    assert values("surface_dice", label, label) == pytest.approx([1.0, 1.0])
    assert values("assd", label, label) == pytest.approx([0.0, 0.0])
    assert values("empty_prediction", label, label) == [0.0, 0.0]


def test_missed_class_scores_worst():
    label = labels_with({1: CUBE_1, 2: CUBE_2})
    prediction = labels_with({1: CUBE_1})

    assert values("dice", prediction, label)[1] == 0.0
    assert values("surface_dice", prediction, label)[1] == 0.0
    assert values("hd95", prediction, label)[1] == pytest.approx(DIAGONAL)
    assert values("assd", prediction, label)[1] == pytest.approx(DIAGONAL)
    assert values("empty_prediction", prediction, label) == [0.0, 1.0]


def test_false_positive_class_scores_worst():
    label = labels_with({1: CUBE_1})
    prediction = labels_with({1: CUBE_1, 2: CUBE_2})

    assert values("dice", prediction, label)[1] == 0.0
    assert values("hd95", prediction, label)[1] == pytest.approx(DIAGONAL)
    assert values("assd", prediction, label)[1] == pytest.approx(DIAGONAL)
    assert values("surface_dice", prediction, label)[1] == 0.0
    assert values("empty_prediction", prediction, label) == [0.0, 0.0]


def test_class_absent_from_both_scores_best():
    label = labels_with({1: CUBE_1})

    assert values("dice", label, label)[1] == 1.0
    assert values("hd95", label, label)[1] == 0.0
    assert values("assd", label, label)[1] == 0.0
    assert values("surface_dice", label, label)[1] == 1.0


def test_distances_use_spacing():
    label = labels_with({1: CUBE_1, 2: CUBE_2})
    prediction = labels_with({1: CUBE_1_SHIFTED, 2: CUBE_2})
    reference_hd = compute_hausdorff_distance(one_hot(prediction), one_hot(label), percentile=95.0, spacing=SPACING)
    unit_hd = compute_hausdorff_distance(one_hot(prediction), one_hot(label), percentile=95.0)
    reference_assd = compute_average_surface_distance(
        one_hot(prediction), one_hot(label), symmetric=True, spacing=SPACING
    )

    assert values("hd95", prediction, label) == pytest.approx(reference_hd[0].tolist())
    assert values("assd", prediction, label) == pytest.approx(reference_assd[0].tolist())
    # A one-voxel shift along the 2 mm axis moves the surface by 2 mm, not by 1 voxel.
    assert values("hd95", prediction, label)[0] == pytest.approx(2.0)
    assert unit_hd[0, 0].item() == pytest.approx(1.0)


def test_surface_dice_tolerance():
    label = labels_with({1: CUBE_1})
    prediction = labels_with({1: CUBE_1_SHIFTED})

    # The shifted cube's surface lies 0 or 2 mm from the label's surface: within 2 mm all of it counts.
    assert values("surface_dice", prediction, label, tolerance=2.0)[0] == pytest.approx(1.0)
    assert values("surface_dice", prediction, label, tolerance=1.0)[0] < 1.0


def test_dice_of_half_overlap():
    label = labels_with({1: CUBE_1})
    prediction = labels_with({1: CUBE_1_SHIFTED})

    # 8 voxels each, 4 shared: 2 * 4 / (8 + 8) = 0.5.
    assert values("dice", prediction, label)[0] == pytest.approx(0.5)


def test_aggregate_and_buffer_keep_every_case():
    metric = CaseMetric("dice")
    label = labels_with({1: CUBE_1, 2: CUBE_2})
    metric(one_hot(label), one_hot(label), spacing=SPACING)
    metric(one_hot(labels_with({1: CUBE_1})), one_hot(label), spacing=SPACING)

    assert metric.get_buffer().tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert metric.aggregate().item() == pytest.approx(0.75)


def test_unknown_metric_and_bad_tolerance_raise():
    with pytest.raises(ValueError, match="unknown metric 'iou'"):
        CaseMetric("iou")
    with pytest.raises(ValueError, match="tolerance must be a finite distance"):
        CaseMetric("surface_dice", tolerance=-1.0)


def test_validation_hd95_prints_no_monai_deprecation_warning():
    # MONAI 1.6.1 passes get_mask_edges a deprecated argument inside its surface metrics; validation must not print it.
    handler = hausdorff_95(lambda output: output)
    label = torch.zeros(1, 3, 8, 8, 8)
    label[:, 0] = 1.0
    label[:, 0, 2:5, 2:5, 2:5] = 0.0
    label[:, 1, 2:5, 2:5, 2:5] = 1.0
    label[:, 2, 6, 6, 6], label[:, 0, 6, 6, 6] = 1.0, 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handler.update((list(label), list(label)))
    assert not [warning for warning in caught if "always_return_as_numpy" in str(warning.message)]
