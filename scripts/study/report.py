"""The study's report: gather the finished runs from MLflow, then write results.md, the CSV files and the plots.

Everything comes from the tracking store (per-case tables from the runs' ``evaluation/cases.csv`` artifacts,
validation curves from the metric histories), so a report written on one machine covers the runs of every shard.
"""

from __future__ import annotations

import csv
import datetime
import logging
import math
import platform
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import yaml

from ..losses import FAMILIES
from ..metrics import CASE_METRICS
from ..options import count
from ..tracking import git_commit
from .plots import plot_boxes, plot_curves
from .settings import PRESETS, TRAIN_CONFIG, RunSpec, StudySettings
from .statistics import MetricSummary, summarise
from .store import ERROR, KEY, StudyStore

logger = logging.getLogger(__name__)

# The compared metrics (empty_prediction is counted, not compared), with their table headers and formats.
COMPARED = {"dice": "Dice", "hd95": "HD95 (mm)", "surface_dice": "NSD", "assd": "ASSD (mm)"}
FORMATS = {"dice": "{:.3f}", "hd95": "{:.2f}", "surface_dice": "{:.3f}", "assd": "{:.2f}"}
CASE_COLUMNS = ["loss", "family", "seed", "fold", "case_id", "class", *CASE_METRICS, "run_id"]
ALPHA = 0.05  # significance level of the Holm-corrected tests in the report's wording


# Published Decathlon results of nnU-Net on the hippocampus task, for the limitations paragraph.
@dataclass
class StudyResults:
    """The finished runs of a study's grid, gathered from MLflow."""

    settings: StudySettings
    records: list[dict] = field(default_factory=list)  # one per run, case and foreground class
    curves: dict[str, list[list[tuple[int, float]]]] = field(default_factory=dict)  # loss -> one curve per run
    complete: list[tuple[RunSpec, str]] = field(default_factory=list)
    failed: list[tuple[RunSpec, str, str]] = field(default_factory=list)  # spec, run id, error
    pending: list[RunSpec] = field(default_factory=list)
    commits: set[str] = field(default_factory=set)
    hardware: set[str] = field(default_factory=set)
    seconds: list[float] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(record["class"] for record in self.records))


def collect(settings: StudySettings, store: StudyStore) -> StudyResults:
    """Gather the per-case values, validation curves and run facts of the grid's runs from MLflow."""
    results = StudyResults(settings)
    by_key: dict[str, list] = defaultdict(list)
    for run in store.children():
        by_key[run.data.tags.get(KEY, "")].append(run)

    with tempfile.TemporaryDirectory(prefix="seglosses-study-") as folder:
        for spec in settings.grid():
            state = store.classify(by_key.get(settings.settings_key(spec), []))
            if state.state == "complete":
                run = state.run
                results.complete.append((spec, run.info.run_id))
                results.records.extend(
                    _case_records(
                        spec, settings.loss_family(spec.loss), run.info.run_id, store.tracking_uri, Path(folder)
                    )
                )
                history = store.client.get_metric_history(run.info.run_id, "val_mean_dice")
                curve = sorted((metric.step, metric.value) for metric in history)
                results.curves.setdefault(spec.loss, []).append(curve)
                tags = run.data.tags
                results.commits.add(tags.get("mlflow.source.git.commit", "unknown"))
                results.hardware.add(tags.get("study.hardware", "unknown"))
                if "study.total_seconds" in tags:
                    results.seconds.append(float(tags["study.total_seconds"]))
            elif state.state == "failed":
                results.failed.append((spec, state.run.info.run_id, state.run.data.tags.get(ERROR, "no error tag")))
            else:
                results.pending.append(spec)
    return results


def _case_records(spec: RunSpec, family: str, run_id: str, tracking_uri: str, folder: Path) -> list[dict]:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="evaluation/cases.csv", dst_path=str(folder / run_id), tracking_uri=tracking_uri
    )
    records = []
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            classes = [column.split(".", 1)[1] for column in row if column.startswith("dice.")]
            for name in classes:
                record = {
                    "loss": spec.loss,
                    "family": family,
                    "seed": spec.seed,
                    "fold": spec.fold,
                    "case_id": row["case_id"],
                    "class": name,
                }
                for metric in CASE_METRICS:
                    record[metric] = float(row[f"{metric}.{name}"])
                record["run_id"] = run_id
                records.append(record)
    return records


def write_report(
    results: StudyResults, report_dir: str | Path, command: str, rewritten_by: str | None = None
) -> list[Path]:
    """Write ``results.md`` and ``results/`` (per-case CSV, summary CSV, plots) to ``report_dir``; return the paths.

    ``command`` is the study's last ``run`` command; ``rewritten_by`` the ``report`` command, when that wrote it.
    """
    settings = results.settings
    report_dir = Path(report_dir)
    files_dir = report_dir / "results"
    files_dir.mkdir(parents=True, exist_ok=True)
    losses = _table_order(settings)
    families = {loss: settings.loss_family(loss) for loss in losses}
    summaries = summarise(
        results.records, {metric: CASE_METRICS[metric] for metric in COMPARED}, settings.reference, losses
    )

    cases_path = files_dir / "cases.csv"
    with cases_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CASE_COLUMNS)
        writer.writeheader()
        for record in results.records:
            writer.writerow(
                {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in record.items()}
            )

    summary_path = files_dir / "summary.csv"
    with summary_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["loss", "family", "metric", "mean", "std", "values", "rank", "p_value", "p_holm", "pairs"])
        for loss in losses:
            for metric, summary in summaries[loss].items():
                writer.writerow(
                    [
                        loss,
                        families[loss],
                        metric,
                        summary.mean,
                        summary.std,
                        summary.values,
                        summary.rank,
                        summary.p_value,
                        summary.p_holm,
                        summary.pairs,
                    ]
                )

    plots = []
    for metric, label in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
        per_loss = _case_class_means(results.records, metric, losses)
        plots.append(
            plot_boxes(
                per_loss,
                families,
                files_dir / f"{metric}_boxplot.png",
                label,
                f"{label} per case and seed (mean over classes), by family",
            )
        )
    curves = {loss: _mean_curve(results.curves.get(loss, [])) for loss in losses}
    plots.append(
        plot_curves(
            curves,
            families,
            files_dir / "validation_curves.png",
            "Validation mean Dice during training (mean over runs)",
        )
    )

    markdown = report_dir / "results.md"
    markdown.write_text(_markdown(results, summaries, losses, families, command, rewritten_by), encoding="utf-8")
    logger.info("Report written to %s.", markdown)
    return [markdown, cases_path, summary_path, *plots]


# Tables and text.


def _markdown(
    results: StudyResults,
    summaries: Mapping[str, Mapping[str, MetricSummary]],
    losses: Sequence[str],
    families: Mapping[str, str],
    command: str,
    rewritten_by: str | None,
) -> str:
    settings = results.settings
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = len(settings.grid())
    trained_at = ", ".join(f"`{_short(commit)}`" for commit in sorted(results.commits)) or "no finished run yet"
    lines = [
        f"# Loss comparison on {settings.dataset_name}",
        "",
        "Generated by the loss study (`python -m scripts.study`, described in `docs/study.md`); do not edit by hand.",
        "",
        "## Setup",
        "",
        f"- Command: `{command}`" + (f"; report rewritten by `{rewritten_by}`." if rewritten_by else ""),
        f"- Date: {now}. Report written at git commit `{_short(git_commit())}`; runs trained at {trained_at}.",
        f"- Hardware: {'; '.join(sorted(results.hardware)) or 'no finished run'}. Report host: {platform.node()}.",
        f"- Study `{settings.study_name}`, preset `{settings.preset}` ({PRESETS[settings.preset].description}); "
        "options on the command line replace the preset's values, and the lines below give the values used.",
        f"- Grid: {count(len(settings.losses), 'loss', 'losses')} x seeds {list(settings.seeds)} x folds "
        f"{list(settings.folds)} of {settings.num_folds} = {count(runs, 'run')}: {len(results.complete)} finished, "
        f"{len(results.failed)} failed, "
        f"{len(results.pending)} not run yet.",
        "- Training: the bundle's `configs/train.yaml` with each loss's overlay, "
        f"{count(settings.max_epochs, 'epoch')}, validation every {count(settings.val_interval, 'epoch')}, "
        "best checkpoint by validation mean Dice"
        + (f", at most {settings.max_cases} cases per split list" if settings.max_cases else "")
        + (f", overrides {dict(settings.overrides)}" if settings.overrides else "")
        + ".",
        f"- Time: {_time_summary(results.seconds)}.",
        f"- Evaluation: the best checkpoint of each run on its held-out fold, per case and foreground class, on the "
        f"1 mm grid the bundle resamples to: Dice, HD95 (mm), normalised surface Dice (NSD) at "
        f"{settings.surface_tolerance:g} mm, ASSD (mm). A class that the prediction misses (or predicts where the "
        "label has none) scores Dice 0, NSD 0, and HD95 and ASSD equal to the volume's diagonal; "
        f"{_missed_summary(results.records)}.",
        f"- Statistics: mean +- standard deviation over (case, seed) of the mean over classes; rank 1 is the best "
        f"mean; two-sided Wilcoxon signed-rank test of each loss against `{settings.reference}` over the cases "
        f"(each case's value averaged over seeds), Holm-corrected over {_count(max(len(losses) - 1, 0), 'comparison')} "
        "of each metric.",
        "",
        "## What this budget can and cannot support",
        "",
        *_limitations(results),
        "",
        "## Results by family",
        "",
        "Each cell: mean +- standard deviation (rank). Missed: case-class pairs where the prediction has no voxel "
        "of a class the label has.",
        "",
    ]
    for family in dict.fromkeys(families[loss] for loss in losses):
        lines += [
            f"### {family}",
            "",
            "| loss | runs | " + " | ".join(COMPARED.values()) + " | missed |",
            "|---|---|" + "---|" * (len(COMPARED) + 1),
        ]
        for loss in (item for item in losses if families[item] == family):
            cells = [_cell(summaries[loss][metric]) for metric in COMPARED]
            runs_done = sum(spec.loss == loss for spec, _ in results.complete)
            lines.append(f"| `{loss}` | {runs_done} | " + " | ".join(cells) + f" | {_missed(results.records, loss)} |")
        lines.append("")

    lines += [
        f"## Paired tests against `{settings.reference}`",
        "",
        "Holm-corrected p-value (raw p-value, cases); better or worse says on which side of the reference the "
        f"mean lies; bold: p < {ALPHA} after correction.",
        "",
        "| loss | " + " | ".join(COMPARED.values()) + " |",
        "|---|" + "---|" * len(COMPARED),
    ]
    for loss in losses:
        if loss == settings.reference:
            continue
        cells = [
            _test_cell(summaries[loss][metric], summaries[settings.reference][metric], CASE_METRICS[metric])
            for metric in COMPARED
        ]
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    lines.append("")

    lines += _per_class_table(results, losses)
    lines += [
        "## Plots",
        "",
        "![Dice per case by loss](results/dice_boxplot.png)",
        "",
        "![HD95 per case by loss](results/hd95_boxplot.png)",
        "",
        "![Validation curves](results/validation_curves.png)",
        "",
    ]
    if results.failed:
        lines += ["## Failed runs", "", "| run | MLflow run | error |", "|---|---|---|"]
        for spec, run_id, error in results.failed:
            lines.append(f"| {spec.name} | `{run_id}` | {error.replace('|', '/')[:400]} |")
        lines.append("")
    if results.pending:
        lines += ["## Runs without a result yet", "", ", ".join(spec.name for spec in results.pending), ""]
    lines += [
        "## Files",
        "",
        "- `results/cases.csv`: every per-case value (one row per run, case and foreground class).",
        "- `results/summary.csv`: the numbers of the tables above, with unrounded p-values.",
        "- The same files are artifacts of the study's parent run in MLflow.",
        "",
    ]
    return "\n".join(lines)


def _limitations(results: StudyResults) -> list[str]:
    settings = results.settings
    default_epochs = _train_default("max_epochs")
    cases = sorted({(record["fold"], record["case_id"]) for record in results.records})
    items = []
    if settings.max_epochs < default_epochs:
        items.append(
            f"- Each run trains {count(settings.max_epochs, 'epoch')} instead of the config's {default_epochs}, so "
            "absolute scores are below those of a full training (docs/README.md reports the default training). "
            "The ranking measures which losses learn fastest in a short schedule; it favours "
            "losses with well-conditioned early gradients and can misjudge losses designed for long training "
            "(for example boundary terms that are ramped up over the epochs)."
        )
    else:
        items.append(f"- Each run trains the config's full {settings.max_epochs} epochs.")
    if len(settings.seeds) == 1:
        items.append(
            "- One seed: the standard deviations are over cases only, and seed-to-seed variation is not "
            "measured; a difference of a few Dice points between two losses can be seed noise."
        )
    else:
        items.append(
            f"- {len(settings.seeds)} seeds: each case's value is averaged over the seeds before the "
            "tests, so seeds do not inflate the number of independent cases."
        )
    if len(settings.folds) < settings.num_folds:
        items.append(
            f"- {len(settings.folds)} of {settings.num_folds} folds: the tests use the {len(cases)} "
            "held-out cases of those folds, not the whole dataset, and a fold's cases share one model."
        )
    if settings.max_cases:
        items.append(
            f"- At most {settings.max_cases} cases per split list: a smoke test of the machinery, not a "
            "comparison of the losses."
        )
    items.append(
        f"- With {len(cases)} paired cases and Holm's correction over "
        f"{_count(max(len(settings.losses) - 1, 0), 'comparison')}, only large and consistent differences reach "
        "significance; a non-significant result "
        "is not evidence that two losses are equal."
    )
    items.append(
        "- One network (the bundle's 3D UNet), one dataset and the overlays' default hyperparameters: "
        "no loss was tuned, and the results need not transfer to other tasks."
    )
    return items


def _per_class_table(results: StudyResults, losses: Sequence[str]) -> list[str]:
    classes = results.classes
    if not classes:
        return []
    lines = [
        "## Per class",
        "",
        "Mean over cases and seeds.",
        "",
        "| loss | "
        + " | ".join(f"Dice {name}" for name in classes)
        + " | "
        + " | ".join(f"HD95 {name} (mm)" for name in classes)
        + " |",
        "|---|" + "---|" * (2 * len(classes)),
    ]
    for loss in losses:
        cells = []
        for metric in ("dice", "hd95"):
            for name in classes:
                values = [
                    record[metric] for record in results.records if record["loss"] == loss and record["class"] == name
                ]
                cells.append(FORMATS[metric].format(np.mean(values)) if values else "-")
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _short(commit: str) -> str:
    """Shorten a commit hash to 12 digits, keeping a ``-dirty`` suffix."""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _cell(summary: MetricSummary) -> str:
    if math.isnan(summary.mean):
        return "-"
    text = FORMATS[summary.metric].format(summary.mean)
    if not math.isnan(summary.std):
        text += " +- " + FORMATS[summary.metric].format(summary.std)
    return f"{text} ({summary.rank:g})"


def _test_cell(summary: MetricSummary, reference: MetricSummary, higher_is_better: bool) -> str:
    if math.isnan(summary.p_holm):
        return "identical" if summary.pairs and not math.isnan(summary.mean) else "-"
    better = (summary.mean > reference.mean) == higher_is_better
    text = f"{summary.p_holm:.3g} ({summary.p_value:.3g}, {summary.pairs}) {'better' if better else 'worse'}"
    return f"**{text}**" if summary.p_holm < ALPHA else text


def _missed(records: Sequence[Mapping], loss: str) -> str:
    flags = [record["empty_prediction"] for record in records if record["loss"] == loss]
    return f"{int(sum(flags))} of {len(flags)}" if flags else "-"


def _missed_summary(records: Sequence[Mapping]) -> str:
    flags = [record["empty_prediction"] for record in records]
    return f"{int(sum(flags))} of {len(flags)} case-class pairs had such a missed class" if flags else "no cases yet"


def _time_summary(seconds: Sequence[float]) -> str:
    if not seconds:
        return "no finished run"
    total = sum(seconds)
    if len(seconds) == 1:
        return f"{total / 60:.1f} min for the one run (training and evaluation)"
    return (
        f"{np.mean(seconds) / 60:.1f} min per run on average (training and evaluation, "
        f"{min(seconds) / 60:.1f} to {max(seconds) / 60:.1f}), {total / 3600:.2f} h for the {len(seconds)} runs"
    )


def _count(number: int, noun: str) -> str:
    """Return ``"1 comparison"`` or ``"3 comparisons"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _case_class_means(records: Sequence[Mapping], metric: str, losses: Sequence[str]) -> dict[str, list[float]]:
    grouped: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for record in records:
        grouped[(record["loss"], record["seed"], record["case_id"])].append(record[metric])
    per_loss: dict[str, list[float]] = {loss: [] for loss in losses}
    for (loss, _, _), values in grouped.items():
        per_loss[loss].append(float(np.mean(values)))
    return per_loss


def _mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for epoch, value in curve:
            by_epoch[epoch].append(value)
    return [(epoch, float(np.mean(values))) for epoch, values in sorted(by_epoch.items())]


def _table_order(settings: StudySettings) -> list[str]:
    return sorted(settings.losses, key=lambda loss: (FAMILIES.index(settings.loss_family(loss)), loss))


def _train_default(key: str):
    return yaml.safe_load(TRAIN_CONFIG.read_text(encoding="utf-8"))[key]
