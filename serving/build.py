"""`churnsense build`: the MLflow champions -> the BentoML model store -> a Bento.

    build_bento() -> "churnsense:<version>"

1. Find the version of `churnsense-churn` holding the registry's `champion` alias, and the sentiment model it was
   trained with (its recorded lineage: the churn model's text features only mean something with that model).
   That must be the `churnsense-sentiment` champion too, since the service answers `/sentiment` with the same
   model: otherwise the build is refused (`churnsense promote sentiment --with-churn` moves both together).
   A churn model without text features is paired with the sentiment champion. Each is imported with
   `bentoml.mlflow.import_model` (the MLflow model folder lands in `<model>/mlflow_model`). Labels keep the
   MLflow version, run id and feature version, so a served answer can be traced back to its run. An import is
   skipped when the newest BentoML copy is already that MLflow version (building twice is cheap).
2. `bentoml build` with the repository's `bentofile.yaml`: the Bento pins the exact model versions the service's
   `BentoModel(...:latest)` references resolve to now.

Stores: MLflow from `MLFLOW_TRACKING_URI` (see `models.catalog`), BentoML under `BENTOML_HOME`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnsense.environment import SERVER
from churnsense.errors import UserError
from models.catalog import ASPECT_MODEL, CHAMPION, CHURN_MODEL, SENTIMENT_MODEL, SURVIVAL_MODEL, tracking_uri

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENTOFILE = REPO_ROOT / "bentofile.yaml"
FEATURE_VERSION_KEYS = ("feature_version", "features.version")
NO_FEATURES = "n/a"  # the sentiment model reads text, not engine features


@dataclass(frozen=True)
class ImportedModel:
    """A BentoML model store entry made from an MLflow registry version."""

    tag: str
    name: str
    mlflow_version: str
    run_id: str
    feature_version: str
    reused: bool

    def render(self) -> str:
        how = "already in the store" if self.reused else "imported"
        features = f", features v{self.feature_version}" if self.feature_version != NO_FEATURES else ""
        return f"{self.name} v{self.mlflow_version} (run {self.run_id[:12]}{features}) -> {self.tag} ({how})"


def _feature_version(model_uri: str, version: Any) -> str:
    """The feature version the model was trained with: its MLmodel metadata, else the version's tags."""
    from mlflow.models import get_model_info

    metadata = get_model_info(model_uri).metadata or {}
    for source in (metadata, version.tags or {}):
        for key in FEATURE_VERSION_KEYS:
            if source.get(key):
                return str(source[key])
    return NO_FEATURES


def _champion(name: str) -> Any:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise UserError(
            f"model registry ({tracking_uri()}): {name!r} has no {CHAMPION!r} version; train and promote it first"
        ) from None


def champion_version(name: str) -> Any:
    """The `champion` version of `name`, or None when it has none (or is not registered)."""
    try:
        return _champion(name)
    except UserError:
        return None


def coupled_sentiment_version(churn_version: Any) -> Any:
    """The sentiment registry version to serve beside a churn version: the one its text features came from.

    Raises:
        UserError: the churn model records another sentiment model than the sentiment champion, or none.
    """
    from mlflow.models import get_model_info

    from models.lineage import SentimentLineage

    sentiment = _champion(SENTIMENT_MODEL)
    metadata = get_model_info(f"models:/{CHURN_MODEL}/{churn_version.version}").metadata or {}
    raw_schema = metadata.get("feature_schema") or "{}"
    schema = json.loads(raw_schema) if isinstance(raw_schema, str) else dict(raw_schema)
    if not schema.get("use_sentiment"):
        return sentiment
    if not metadata.get("sentiment_model"):
        raise UserError(
            f"{CHURN_MODEL} v{churn_version.version} uses text sentiment features but does not record which "
            "sentiment model built them; retrain it with --sentiment-model"
        )
    lineage = SentimentLineage.from_dict(metadata["sentiment_model"])
    if lineage.name != SENTIMENT_MODEL or str(lineage.version) != str(sentiment.version):
        raise UserError(
            f"{CHURN_MODEL} champion v{churn_version.version} was trained on text features from "
            f"{lineage.describe()}, but the {SENTIMENT_MODEL} champion is v{sentiment.version}: the Bento would "
            f"serve churn risks its model was not trained for. Move both together: churnsense promote sentiment "
            "--with-churn"
        )
    return sentiment


def coupled_aspect_version(churn_version: Any) -> Any:
    """The aspect registry version to serve beside a churn version: the one its aspect features came from (not
    necessarily the champion), else the aspect champion if any (it then only annotates evidence and /sentiment).

    Raises:
        UserError: the churn model records an aspect model that is not a registered version.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from models.lineage import AspectLineage

    metadata = get_model_info(f"models:/{CHURN_MODEL}/{churn_version.version}").metadata or {}
    if not metadata.get("aspect_model"):
        return champion_version(ASPECT_MODEL)
    lineage = AspectLineage.from_dict(metadata["aspect_model"])
    if lineage.name != ASPECT_MODEL or lineage.version is None:
        raise UserError(
            f"{CHURN_MODEL} v{churn_version.version} counts negative texts per aspect by {lineage.describe()}, "
            f"which is not a version of {ASPECT_MODEL}: the Bento can only carry a registered one; retrain with "
            f"--aspect-model models:/{ASPECT_MODEL}@champion"
        )
    try:
        return MlflowClient().get_model_version(ASPECT_MODEL, str(lineage.version))
    except MlflowException:
        raise UserError(
            f"{CHURN_MODEL} v{churn_version.version} was trained with {lineage.describe()}, which the registry "
            f"({tracking_uri()}) no longer has"
        ) from None


def coupled_survival_version(churn_version: Any) -> Any:
    """The survival champion, if there is one and it can answer beside this churn version (the same event and
    text features, its profile columns among the churn model's: `SurvivalModel.check_fits`); else None, with a
    warning naming why: the Bento then answers without time to churn."""
    from models.churn import ChurnModel, ModelContractError
    from models.survival import SurvivalModel

    survival = champion_version(SURVIVAL_MODEL)
    if survival is None:
        return None
    model = SurvivalModel.load(f"models:/{SURVIVAL_MODEL}/{survival.version}")
    try:
        model.check_fits(ChurnModel.load(f"models:/{CHURN_MODEL}/{churn_version.version}"))
    except ModelContractError as error:
        logger.warning(
            "%s; the Bento answers without time to churn (retrain it: churnsense train survival)", error
        )
        return None
    return survival


def import_champion(name: str, version: Any = None, pairs: dict[str, str] | None = None) -> ImportedModel:
    """Copy a registered MLflow model version (default: the `champion`) into the BentoML model store.

    `pairs` (for the churn model): the optional models' versions it is served with ("" for none), kept as
    labels: the service takes an optional model only when its newest store entry is the one named
    (`serving.loading.paired`), never a stale one a previous build imported.

    Raises:
        UserError: the model has no champion (train and promote it first).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    version = version if version is not None else _champion(name)
    model_uri = f"models:/{name}/{version.version}"
    labels = {
        "mlflow_model": name,
        "mlflow_version": str(version.version),
        "mlflow_run_id": str(version.run_id),
        "feature_version": _feature_version(model_uri, version),
    } | {f"{kind}_version": v for kind, v in (pairs or {}).items()}
    try:
        existing = sorted(bentoml.models.list(name), key=lambda m: m.info.creation_time)
    except NotFound:
        existing = []
    if existing and all(existing[-1].info.labels.get(k) == v for k, v in labels.items()):
        model = existing[-1]
        reused = True
    else:
        # Always a new entry (even for a version imported before, e.g. after a rollback), so that the newest
        # entry, which `:latest` resolves to, is the current champion.
        model = bentoml.mlflow.import_model(
            name,
            model_uri=model_uri,
            labels=labels,
            metadata={
                "mlflow_tracking_uri": tracking_uri(),
                "mlflow_source": str(version.source),
                "registered_at_ms": int(version.creation_timestamp or 0),
            },
        )
        reused = False
    imported = ImportedModel(
        tag=str(model.tag),
        name=name,
        mlflow_version=labels["mlflow_version"],
        run_id=labels["mlflow_run_id"],
        feature_version=labels["feature_version"],
        reused=reused,
    )
    logger.info("%s", imported.render())
    return imported


def pinned_bentofile(bentofile: Path) -> str:
    """The build file with every `python.packages` entry pinned to the version installed here (`name==x.y.z`)
    and the server's environment (`churnsense.environment.SERVER`) as its `envs`.

    `lock_packages: false` keeps uv from resolving torch to CUDA wheels, but would leave the Bento's packages
    unpinned; the versions this code was tested with are the ones a Bento must carry.
    """
    import re
    from importlib.metadata import PackageNotFoundError, version

    import yaml

    raw = yaml.safe_load(bentofile.read_text(encoding="utf-8"))
    pinned = []
    for requirement in raw.get("python", {}).get("packages", []):
        name = re.split(r"[<>=!~ \[;]", str(requirement), maxsplit=1)[0].strip()
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise UserError(
                f"{bentofile}: python.packages names {name!r}, which is not installed here"
            ) from None
    raw.setdefault("python", {})["packages"] = pinned
    envs = {item["name"]: str(item["value"]) for item in raw.get("envs") or []}
    raw["envs"] = [{"name": name, "value": value} for name, value in {**SERVER, **envs}.items()]
    return yaml.safe_dump(raw, sort_keys=False)


def build_bento(bentofile: Path = BENTOFILE, version: str | None = None) -> str:
    """Import both champions and build the Bento; returns its tag (``churnsense:<version>``).

    Args:
        bentofile: the build file (default: the repository's `bentofile.yaml`).
        version: the Bento version (default: generated by BentoML).
    """
    import bentoml

    churn = _champion(CHURN_MODEL)
    sentiment = coupled_sentiment_version(churn)  # refuses a pair that was not trained together
    # Optional: an aspect model (the churn model's own, else the champion) names what texts are about; a survival
    # model (the champion, if it fits the churn model) adds time to churn to every churn answer.
    optional = {
        ASPECT_MODEL: coupled_aspect_version(churn),
        SURVIVAL_MODEL: coupled_survival_version(churn),
    }
    pairs = {name: str(v.version) if v is not None else "" for name, v in optional.items()}
    models = [import_champion(CHURN_MODEL, churn, pairs), import_champion(SENTIMENT_MODEL, sentiment)]
    models += [import_champion(name, v) for name, v in optional.items() if v is not None]
    with tempfile.TemporaryDirectory(prefix="churnsense-build-") as folder:
        pinned_file = Path(folder) / "bentofile.yaml"
        pinned_file.write_text(pinned_bentofile(Path(bentofile)), encoding="utf-8")
        bento = bentoml.bentos.build_bentofile(
            str(pinned_file),
            build_ctx=str(Path(bentofile).resolve().parent),
            version=version,
            labels={f"{m.name}.mlflow_version": m.mlflow_version for m in models},
        )
    tag = str(bento.tag)
    pinned = sorted(str(m.tag) for m in bento.info.all_models)
    logger.info("built Bento %s with models %s", tag, ", ".join(pinned))
    missing = [m.tag for m in models if m.tag not in pinned]
    if missing:
        raise UserError(
            f"Bento {tag} does not carry {', '.join(missing)}; is the service's model reference stale?"
        )
    return tag


def describe_bento(tag: str) -> str:
    """A few lines for the terminal: the Bento, its service and the models it carries."""
    import bentoml

    bento = bentoml.get(tag)
    lines = [f"Bento {bento.tag} (service {bento.info.service})"]
    for model in bento.info.all_models:
        stored = bentoml.models.get(model.tag)
        labels = stored.info.labels
        features = labels.get("feature_version", NO_FEATURES)
        lines.append(
            f"  {model.tag}: MLflow {labels.get('mlflow_model', '?')} v{labels.get('mlflow_version', '?')}, "
            f"run {labels.get('mlflow_run_id', '?')[:12]}"
            + (f", features v{features}" if features != NO_FEATURES else "")
        )
    lines.append(f"serve it: churnsense serve  (or: bentoml serve {bento.tag})")
    return "\n".join(lines)
