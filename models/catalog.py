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
ASPECT_MODEL = "churnsense-aspects"
SURVIVAL_MODEL = "churnsense-survival"
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


_ready: set[str] = set()


def ready_store(uri: str | None = None) -> str:
    """Make sure the tracking store behind `uri` (default `tracking_uri()`) exists, creating it under a lock.

    A new SQLite store is created by MLflow's alembic migrations on first use; two processes doing that at once
    (two first trainings) made one of them fail. For SQLite stores the first use happens under an exclusive
    lock on `<db>.lock` beside the file, so the second process finds the tables made. Once per process and URI.
    Returns the URI.
    """
    uri = uri or tracking_uri()
    if uri in _ready:
        return uri
    match = re.match(r"^sqlite:///(.+)$", uri)
    if match:
        import fcntl

        from mlflow import MlflowClient

        database = Path(match.group(1)).expanduser()
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{database}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                client.search_experiments(max_results=1)  # creates or migrates the tracking tables
                client.search_registered_models(max_results=1)  # and the registry's
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _ready.add(uri)
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
        uri_of_store = ready_store(absolute_tracking_uri())
        version = MlflowClient(tracking_uri=uri_of_store).get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise UserError(
            f"{uri} does not resolve in {tracking_uri()} ({error.message}); train and promote a model first"
        ) from None
    return f"models:/{name}/{version.version}", str(version.version)


def configure_mlflow(experiment_name: str) -> str:
    """Point MLflow at the configured store and select (creating if needed) the experiment; returns its id."""
    import mlflow

    from churnsense.environment import QUIET, paths, set_defaults

    set_defaults(QUIET)
    mlflow.set_tracking_uri(ready_store(tracking_uri()))  # a new store is created under a lock
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        root = paths().artifact_root
        location = Path(root, experiment_name).resolve().as_uri() if root else None
        experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
