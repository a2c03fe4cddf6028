"""Shared test fixtures. Every test session gets its own temporary MLflow store and BentoML home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from churnsense.environment import OFFLINE, QUIET, SCORING, set_defaults

# Before any library import in a test: no telemetry, no hub access, idle OpenMP threads sleep (churnsense.environment).
set_defaults(QUIET, OFFLINE, SCORING)

# Session fixtures with small real models and the real server (the service and skew tests share them).
pytest_plugins = ["tests.served_models", "tests.databases"]

LEVELS = ("unit", "integration", "server")
"""Test folders, one per level (tests/README.md); each test gets its folder's marker: `pytest -m unit`."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        level = Path(item.fspath).parent.name
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session", autouse=True)
def isolated_stores(session_tmp: Path):
    """A throwaway MLflow store (SQLite + artifacts) and BentoML home for the whole test session."""
    mlflow_dir = session_tmp / "mlflow"
    mlflow_dir.mkdir()
    saved = {
        k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "CHURNSENSE_ARTIFACT_ROOT")
    }
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    os.environ["CHURNSENSE_ARTIFACT_ROOT"] = str(mlflow_dir / "artifacts")
    os.environ["BENTOML_HOME"] = str(session_tmp / "bentoml")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole test run (the batch and skew tests share it)."""
    pytest.importorskip("pyspark")
    from batch.spark import spark_session

    session = spark_session("local[2]", driver_memory="2g")
    yield session
    session.stop()
