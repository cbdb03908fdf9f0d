"""The loss comparison study: every loss trained and evaluated the same way, with statistics and a report.

``python -m scripts.study run`` drives the bundle's own training and evaluation workflows over a grid of
(loss, seed, fold) runs and records each run as a child of one MLflow parent run. It skips what is already
finished and writes ``results.md`` with tables, paired tests and plots. ``docs/study.md`` describes the method.
"""

from .settings import PRESETS, Preset, RunSpec, StudySettings, parse_shard
from .workflow import report, run

__all__ = ["PRESETS", "Preset", "RunSpec", "StudySettings", "parse_shard", "report", "run"]
