"""Command line of the loss study: ``python -m scripts.study run|report``."""

from __future__ import annotations

import os
import sys

from ..cli import run_commands
from .workflow import report, run

if __name__ == "__main__":
    # The report downloads one small file per run; MLflow's progress bars would bury the progress lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        run_commands({"run": run, "report": report})
    except KeyboardInterrupt:
        print(
            "error: the study was interrupted. Finished runs are kept in MLflow; run the same command again to resume.",
            file=sys.stderr,
        )
        sys.exit(130)
