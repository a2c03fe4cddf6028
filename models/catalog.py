"""Where models live: their registered names, the MLflow tracking store, and alias resolution.

Training, serving, batch scoring and the CLI all find models through these few functions, so a name is spelled
once and an alias (`models:/churnsense-churn@champion`) is pinned to one version in one place.

Tracking URI: `MLFLOW_TRACKING_URI` if set, else the embedded SQLite store `sqlite:///mlflow.db` in the working
directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from churnsense.errors import UserError

CHURN_MODEL = "churnsense-churn"
SENTIMENT_MODEL = "churnsense-sentiment"
CHAMPION = "champion"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """The configured MLflow tracking URI (`MLFLOW_TRACKING_URI`, else ./mlflow.db)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_tracking_uri() -> str:
    """`tracking_uri()` with a relative SQLite or file path made absolute (for workers in other folders)."""
    uri = tracking_uri()
    match = re.match(r"^sqlite:///(?!/)(.+)$", uri)
    if match:
        return f"sqlite:///{Path(match.group(1)).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def registry_name_version(uri: str) -> tuple[str, str] | None:
    """(name, version) of a concrete `models:/name/N` URI; None for anything else."""
    match = re.match(r"^models:/([^/@]+)/(\d+)$", uri)
    return (match.group(1), match.group(2)) if match else None


def resolve_model_uri(uri: str) -> tuple[str, str | None]:
    """`models:/name@alias` -> (`models:/name/<version>`, version); `models:/name/N` -> (itself, N); other URIs
    (runs, folders) are returned as they are with version None.

    Raises:
        UserError: the alias or name does not resolve in the current store.
    """
    match = re.match(r"^models:/([^/@]+)@(.+)$", uri)
    if not match:
        pinned = registry_name_version(uri)
        return uri, pinned[1] if pinned else None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = match.groups()
    try:
        version = MlflowClient(tracking_uri=absolute_tracking_uri()).get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise UserError(
            f"{uri} does not resolve in {tracking_uri()} ({error.message}); train and promote a model first"
        ) from None
    return f"models:/{name}/{version.version}", str(version.version)
