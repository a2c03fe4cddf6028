"""MLflow setup shared by every training pipeline: where runs go, and what identifies data and code.

Tracking URI: `models.catalog.tracking_uri` (`MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the
working directory). Artifacts go to `./mlruns` unless `CHURNSENSE_ARTIFACT_ROOT` names another folder (tests
use that to keep each session's store in a temporary directory).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

import pandas as pd

from models.catalog import configure_mlflow  # noqa: F401  (re-exported: every trainer imports it from here)

logger = logging.getLogger(__name__)


def data_fingerprint(frame: pd.DataFrame, time_column: str | None = None) -> dict[str, str | int]:
    """Rows, columns, a content hash and (optionally) the date range: enough to tell two data sets apart."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
    info: dict[str, str | int] = {"rows": len(frame), "columns": frame.shape[1], "sha256": digest[:16]}
    if time_column and time_column in frame.columns and len(frame):
        times = pd.to_datetime(frame[time_column])
        info["date_min"] = str(times.min())
        info["date_max"] = str(times.max())
    return info


def code_version() -> str:
    """The git commit of the checkout (with `-dirty` for local changes), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        from churnsense import __version__

        return __version__
