"""The process environment in one place: what churnsense sets for third-party libraries, and where it keeps files.

Two kinds of environment variable, both read here and nowhere else:

- **Defaults for the libraries** (`QUIET`, `OFFLINE`, `SCORING`, and `SERVER`, all three plus one thread): telemetry off, no hub look-ups, OpenMP threads
  that sleep when idle. `set_defaults` applies a group with `setdefault`, so a variable the user exported wins.
  Entry points call it before the libraries are imported (the CLI, the demo, the service, the server wrapper).
- **churnsense's own paths** (`Paths`, pydantic-settings): `CHURNSENSE_CACHE_DIR`, `CHURNSENSE_ARTIFACT_ROOT` and
  `CHURNSENSE_STORE_URL` (the event store).
  The MLflow store itself is MLflow's own `MLFLOW_TRACKING_URI` (`models.catalog.tracking_uri`).

The service's limits and tuning knobs are `serving.settings.ServingSettings`, the same mechanism with the
`CHURNSENSE_` prefix; the training configurations are frozen pydantic models read from YAML
(`training.churn_config`, `training.sentiment_config`). Defaults live in each model's fields, nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "CHURNSENSE_"

QUIET: Mapping[str, str] = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    # numexpr's own default cap, said out loud: unset, numexpr (pandas loads it) logs an INFO line on import,
    # which would land in every command's stderr.
    "NUMEXPR_MAX_THREADS": "16",
}
"""No telemetry from MLflow, BentoML or anything honouring DO_NOT_TRACK; no tokenizer thread pools; no
import-time chatter."""

OFFLINE: Mapping[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""No Hugging Face hub look-ups. Left out only by training with a hub id as backbone (a deliberate download)."""

SCORING: Mapping[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Idle OpenMP threads sleep instead of spinning: on a 2-core machine a spinning thread starves the one it waits
for. Set before scikit-learn or torch load OpenMP."""

SERVER: Mapping[str, str] = {**QUIET, **OFFLINE, **SCORING, "OMP_NUM_THREADS": "1"}
"""What a `bentoml serve` of churnsense runs with (`churnsense serve` and the Bento's `envs`). The worker's threads
also get an explicit limit (`serving.threads`); OMP_NUM_THREADS covers threads started before that."""


def set_defaults(*groups: Mapping[str, str], environ: MutableMapping[str, str] | None = None) -> None:
    """`setdefault` every variable of `groups` in `environ` (default: this process's environment)."""
    target = os.environ if environ is None else environ
    for group in groups:
        for name, value in group.items():
            target.setdefault(name, value)


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "churnsense"


class Paths(BaseSettings):
    """Where churnsense keeps its own files; `CHURNSENSE_<FIELD>` overrides each (read when constructed)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="sentiment score cache (one folder per model scoring id)",
    )
    artifact_root: Path | None = Field(
        None,
        description="folder for MLflow run artifacts of new experiments (None: MLflow's default ./mlruns)",
    )
    store_url: str | None = Field(
        None,
        description="the event store's SQLAlchemy URL (CLI default: sqlite:///churnsense_store.db; the service "
        "answers by-id requests only when it is set)",
    )


def paths() -> Paths:
    """The paths as the environment says now (not cached: tests and the demo point them elsewhere)."""
    return Paths()
