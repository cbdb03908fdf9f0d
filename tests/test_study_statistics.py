"""The study's statistics on a fixed table whose Wilcoxon p-values are derived by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from scripts.study.statistics import case_means, holm, ranks, summarise, wilcoxon_p

# Per-case values of the reference loss "A" and each loss's differences from it (6 cases, distinct magnitudes, so
# the signed ranks are the magnitudes' order 1..6).
REFERENCE = [0.50, 0.60, 0.70, 0.80, 0.90, 0.40]
DIFFERENCES = {
    "B": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06],
    "C": [0.01, -0.02, 0.03, 0.04, 0.05, 0.06],
    "D": [-0.01, 0.02, 0.03, -0.04, 0.05, 0.06],
}
# Exact two-sided p = 2 P(T- <= t) with T- the sum of negative ranks; under H0 each of the 2^6 = 64 sign patterns
# is equally likely, so P(T- <= t) = #(subsets of {1..6} with sum <= t) / 64.
#   B: T- = 0, subsets {}                                   -> 1,  p = 2 * 1 / 64  = 0.03125
#   C: T- = 2, subsets {}, {1}, {2}                         -> 3,  p = 2 * 3 / 64  = 0.09375
#   D: T- = 1 + 4 = 5, subsets with sum <= 5: {} {1} {2} {3} {1,2} {4} {1,3} {5} {1,4} {2,3} -> 10, p = 0.3125
EXACT_P = {"B": 0.03125, "C": 0.09375, "D": 0.3125}
# Holm with m = 3, sorted p: 3 * 0.03125 = 0.09375; max(0.09375, 2 * 0.09375) = 0.1875; max(0.1875, 0.3125).
HOLM_P = {"B": 0.09375, "C": 0.1875, "D": 0.3125}


def case_value(loss: str, case: int) -> float:
    return REFERENCE[case] + (DIFFERENCES[loss][case] if loss != "A" else 0.0)


def table() -> list[dict]:
    """Rows for 4 losses x 6 cases x 2 seeds x 2 classes; the class and seed offsets cancel in each case's mean."""
    rows = []
    for loss in ("A", "B", "C", "D"):
        for case in range(6):
            for seed, seed_offset in ((0, -0.05), (1, 0.05)):
                for name, class_offset in (("left", -0.1), ("right", 0.1)):
                    value = case_value(loss, case) + seed_offset + class_offset
                    rows.append(
                        {
                            "loss": loss,
                            "seed": seed,
                            "case_id": f"case_{case}",
                            "class": name,
                            "dice": value,
                            "hd95": value,
                        }
                    )
    return rows


def enumerated_p(differences: list[float]) -> float:
    """The exact two-sided signed-rank p-value from every one of the 2^n sign patterns (no ties, no zeros)."""
    signed_ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    total = int(signed_ranks.sum())
    observed = int(signed_ranks[np.asarray(differences) < 0].sum())
    statistic = min(observed, total - observed)
    extreme = 0
    for signs in itertools.product((0, 1), repeat=len(differences)):
        negative = int(np.dot(signs, signed_ranks))
        if min(negative, total - negative) <= statistic:
            extreme += 1
    return extreme / 2 ** len(differences)


@pytest.mark.parametrize("loss", ["B", "C", "D"])
def test_wilcoxon_matches_hand_derived_p(loss):
    values = [case_value(loss, case) for case in range(6)]

    assert wilcoxon_p(values, REFERENCE) == pytest.approx(EXACT_P[loss], abs=1e-12)
    assert enumerated_p(DIFFERENCES[loss]) == pytest.approx(EXACT_P[loss], abs=1e-12)


def test_wilcoxon_identical_values_give_nan():
    assert math.isnan(wilcoxon_p([0.5, 0.6], [0.5, 0.6]))


def test_holm_adjusts_in_input_order():
    adjusted = holm([EXACT_P["D"], EXACT_P["B"], EXACT_P["C"]])

    assert adjusted == pytest.approx([HOLM_P["D"], HOLM_P["B"], HOLM_P["C"]])


def test_holm_skips_nan_and_caps_at_one():
    adjusted = holm([math.nan, 0.4, 0.3])

    assert math.isnan(adjusted[0])
    # m = 2: 2 * 0.3 = 0.6, then max(0.6, min(1, 1 * 0.4)) = 0.6.
    assert adjusted[1:] == pytest.approx([0.6, 0.6])
    assert holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])


def test_ranks_direction_and_ties():
    assert ranks([0.7, 0.9, 0.8], higher_is_better=True) == [3.0, 1.0, 2.0]
    assert ranks([0.7, 0.9, 0.8], higher_is_better=False) == [1.0, 3.0, 2.0]
    assert ranks([0.5, 0.5, 0.9], higher_is_better=True) == [2.5, 2.5, 1.0]
    assert ranks([math.nan, 0.5], higher_is_better=True) == [2.0, 1.0]


def test_case_means_average_classes_then_seeds():
    means = case_means(table(), "dice")

    assert means["A"]["case_0"] == pytest.approx(0.50)
    assert means["C"]["case_1"] == pytest.approx(0.60 - 0.02)
    assert len(means["B"]) == 6


def test_summarise_fixed_table():
    summary = summarise(table(), {"dice": True, "hd95": False}, reference="A", losses=["A", "B", "C", "D"])

    for loss in ("B", "C", "D"):
        assert summary[loss]["dice"].p_value == pytest.approx(EXACT_P[loss], abs=1e-12), loss
        assert summary[loss]["dice"].p_holm == pytest.approx(HOLM_P[loss], abs=1e-12), loss
        assert summary[loss]["dice"].pairs == 6
    assert math.isnan(summary["A"]["dice"].p_value)
    # Means over (case, seed) of the class means: 3.9 / 6 for A, plus the mean difference for the others.
    assert summary["A"]["dice"].mean == pytest.approx(0.65)
    assert summary["B"]["dice"].mean == pytest.approx(0.65 + 0.21 / 6)
    assert summary["D"]["dice"].mean == pytest.approx(0.65 + 0.11 / 6)
    # Standard deviation over the 12 (case, seed) values A_i -+ 0.05.
    pooled = [value + offset for value in REFERENCE for offset in (-0.05, 0.05)]
    assert summary["A"]["dice"].std == pytest.approx(np.std(pooled, ddof=1))
    assert summary["A"]["dice"].values == 12
    assert [summary[loss]["dice"].rank for loss in "ABCD"] == [4.0, 1.0, 2.0, 3.0]
    assert [summary[loss]["hd95"].rank for loss in "ABCD"] == [1.0, 4.0, 3.0, 2.0]


def test_summarise_loss_without_records():
    summary = summarise(table(), {"dice": True}, reference="A", losses=["A", "E"])

    assert math.isnan(summary["E"]["dice"].mean)
    assert math.isnan(summary["E"]["dice"].p_value)
    assert summary["E"]["dice"].rank == 2.0
