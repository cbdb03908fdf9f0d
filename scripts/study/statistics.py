"""Aggregates, ranks and paired tests of the study's per-case metric values.

The unit of the paired tests is the case: each loss's value for a case is the mean over the foreground classes,
then over the seeds, so that repeated seeds do not count as independent cases. Each loss is compared with the
reference loss by a two-sided Wilcoxon signed-rank test over the cases that both have, and the p-values of one
metric are corrected for the number of losses compared with the Holm step-down method.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MetricSummary:
    """One loss's summary of one metric.

    ``mean`` and ``std`` are over every (case, seed) pair of the class-mean values (sample standard deviation,
    NaN for a single value). ``rank`` is 1 for the best mean, ties share the average rank. ``p_value`` and
    ``p_holm`` compare the loss with the reference, and are NaN for the reference itself and where the test is
    undefined. ``pairs`` is the number of cases in that test.
    """

    loss: str
    metric: str
    mean: float
    std: float
    values: int
    rank: float
    p_value: float
    p_holm: float
    pairs: int


def holm(p_values: Sequence[float]) -> list[float]:
    """Return Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and are not counted.

    With the ``m`` defined p-values sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    adjusted = [math.nan] * len(p_values)
    defined = sorted((value, index) for index, value in enumerate(p_values) if not math.isnan(value))
    count = len(defined)
    running = 0.0
    for position, (value, index) in enumerate(defined):
        running = max(running, min(1.0, (count - position) * value))
        adjusted[index] = running
    return adjusted


def wilcoxon_p(values: Sequence[float], reference: Sequence[float]) -> float:
    """Return the two-sided Wilcoxon signed-rank p-value of paired values, NaN when every difference is zero.

    SciPy's defaults apply: zero differences are dropped (Wilcoxon's convention), and the exact null distribution
    is used for up to 50 pairs without ties or zeros, the normal approximation otherwise.
    """
    differences = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if differences.size == 0 or not np.any(differences != 0):
        return math.nan
    return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def ranks(means: Sequence[float], higher_is_better: bool) -> list[float]:
    """Rank the means, 1 for the best; ties share the average rank and NaN means rank last."""
    keys = np.asarray(means, dtype=np.float64)
    keys = -keys if higher_is_better else keys
    keys = np.where(np.isnan(keys), np.inf, keys)
    return [float(rank) for rank in stats.rankdata(keys, method="average")]


def case_means(records: Iterable[Mapping], metric: str) -> dict[str, dict[str, float]]:
    """Return ``{loss: {case_id: value}}``: the metric averaged over the foreground classes, then the seeds."""
    per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for record in records:
        per_seed[(record["loss"], record["case_id"], record["seed"])].append(float(record[metric]))
    per_case: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (loss, case_id, _), values in per_seed.items():
        per_case[(loss, case_id)].append(float(np.mean(values)))
    result: dict[str, dict[str, float]] = defaultdict(dict)
    for (loss, case_id), values in per_case.items():
        result[loss][case_id] = float(np.mean(values))
    return dict(result)


def summarise(
    records: Sequence[Mapping], metrics: Mapping[str, bool], reference: str, losses: Sequence[str]
) -> dict[str, dict[str, MetricSummary]]:
    """Summarise every loss and metric: mean, std, rank and the Holm-corrected test against ``reference``.

    Args:
        records: per-case rows with ``loss``, ``seed``, ``case_id``, ``class`` and one column per metric.
        metrics: metric name -> whether higher values are better.
        reference: the loss every other loss is compared with.
        losses: the losses to summarise, in table order; a loss without records gets NaN.

    Returns:
        ``{loss: {metric: MetricSummary}}``.
    """
    summaries: dict[str, dict[str, MetricSummary]] = {loss: {} for loss in losses}
    for metric, higher_is_better in metrics.items():
        # Class means per (loss, case, seed): the spread over cases and seeds.
        per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        for record in records:
            per_seed[(record["loss"], record["case_id"], record["seed"])].append(float(record[metric]))
        pooled: dict[str, list[float]] = defaultdict(list)
        for (loss, _, _), values in per_seed.items():
            pooled[loss].append(float(np.mean(values)))
        means = [float(np.mean(pooled[loss])) if pooled[loss] else math.nan for loss in losses]
        metric_ranks = ranks(means, higher_is_better)

        by_case = case_means(records, metric)
        reference_cases = by_case.get(reference, {})
        p_values, pairs = [], []
        for loss in losses:
            cases = sorted(set(by_case.get(loss, {})) & set(reference_cases))
            pairs.append(len(cases))
            if loss == reference or not cases:
                p_values.append(math.nan)
            else:
                p_values.append(
                    wilcoxon_p([by_case[loss][case] for case in cases], [reference_cases[case] for case in cases])
                )
        adjusted = holm(p_values)

        for index, loss in enumerate(losses):
            values = pooled[loss]
            summaries[loss][metric] = MetricSummary(
                loss=loss,
                metric=metric,
                mean=means[index],
                std=float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                values=len(values),
                rank=metric_ranks[index],
                p_value=p_values[index],
                p_holm=adjusted[index],
                pairs=pairs[index] if loss != reference else 0,
            )
    return summaries
