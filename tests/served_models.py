"""Small real models and the real server, shared by the service and the skew ("one truth") tests.

Session fixtures: simulator data, a tiny random BERT sentiment model (int8, as served), a small churn model
trained on that data with the sentiment model's text features and a survival model on the same features, all
registered and promoted in the session's MLflow store; `churnsense build` into the session's BentoML home; a real `bentoml serve` on 127.0.0.1.
Helpers build request bodies from canonical tables and compute the offline answer for one customer.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml

from serving.settings import current_settings

# A Bento carries its models: a served one must never need the MLflow store it was built from (a survival model
# once asked the store about itself and the server did not start where no store was reachable).
NO_TRACKING_STORE = {"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/churnsense-no-tracking-store.db"}
SERVER_LIMITS = {
    "CHURNSENSE_MAX_EVENTS": "300",
    "CHURNSENSE_MAX_TEXTS": "20",
    "CHURNSENSE_MAX_TEXT_CHARS": "400",
    "CHURNSENSE_BATCH_MAX_CUSTOMERS": "6",
    "CHURNSENSE_MAX_BODY_MB": "1",
}


# --- small real models --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_data(session_tmp: Path) -> Path:
    from features.simulate import write_demo_data

    folder = session_tmp / "service_data"
    write_demo_data(folder, n_customers=1000, seed=5)
    return folder / "spec.yaml"


@pytest.fixture(scope="session")
def trained(demo_data: Path, session_tmp: Path) -> dict:
    """Small churn and tiny sentiment models trained, registered and promoted in the session's MLflow store."""
    from tests.sentiment_helpers import train_tiny_sentiment
    from training.churn import train_churn
    from training.churn_config import ChurnConfig
    from training.churn_promotion import promote_churn
    from training.sentiment import promote_sentiment

    train_tiny_sentiment(session_tmp / "service_sentiment")
    promote_sentiment(
        force=True
    )  # these two must be the champions the Bento serves, whatever else is registered
    from models.sentiment import SentimentClassifier

    scorer = SentimentClassifier.load("models:/churnsense-sentiment@champion")  # int8, as served
    # A zero-shot aspect model on the tiny encoder: the churn model counts negative texts per aspect with it,
    # and the Bento answers /sentiment with aspects.
    from training.aspects import load_aspect_config, promote_aspects, train_zero_shot

    taxonomy = session_tmp / "aspects.yaml"
    taxonomy.write_text(
        yaml.safe_dump(
            {
                "aspects": [
                    {"name": "crew", "description": "the staff and crew were rude or friendly"},
                    {"name": "delays", "description": "slow delivery, the flight was late, waiting"},
                ],
                "backbone": str(session_tmp / "service_sentiment" / "tiny_bert"),
            }
        ),
        encoding="utf-8",
    )
    train_zero_shot(load_aspect_config(taxonomy))
    promote_aspects(force=True)
    from models.aspect_scoring import CachedAspectLabeler

    labeler = CachedAspectLabeler.from_uri(
        "models:/churnsense-aspects@champion", session_tmp / "aspect_cache"
    )
    # A short search: what is served does not depend on how the trees were chosen.
    train_churn(
        demo_data, ChurnConfig(search={"max_trials": 3}), sentiment_scorer=scorer, aspect_labeler=labeler
    )
    promote_churn(force=True)
    # Time to churn from the same features: every kind of survival model in one average (Cox, boosted trees,
    # a forest), small, so that every path's answers come from each.
    from training.churn_config import parse_config
    from training.survival import train_survival
    from training.survival_promotion import promote_survival

    survival_config = parse_config(
        {"survival": {"candidates": ["cox+gbsa+rsf"], "gbsa_trees": 20, "rsf_trees": 10, "threads": 1}}
    )
    train_survival(demo_data, survival_config, sentiment_scorer=scorer, aspect_labeler=labeler)
    promote_survival(force=True, config=survival_config)
    # Other test modules share the session store and register versions too: ask which ones are champion.
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = {
        kind: str(client.get_model_version_by_alias(f"churnsense-{kind}", "champion").version)
        for kind in ("churn", "sentiment", "aspects", "survival")
    }
    return {"spec": demo_data, "versions": versions}


@pytest.fixture(scope="session")
def models(trained):
    from models.churn import ChurnModel
    from models.sentiment import SentimentClassifier

    return ChurnModel.load("models:/churnsense-churn@champion"), SentimentClassifier.load(
        "models:/churnsense-sentiment@champion"
    )


@pytest.fixture(scope="session")
def canonical(trained) -> tuple[pd.DataFrame, pd.DataFrame, dt.date]:
    """Customers and events as the loaders give them, and the newest snapshot date."""
    from features.pipeline import load_data
    from features.spec import load_spec

    spec = load_spec(trained["spec"])
    data = load_data(spec, with_text=True)
    return data.customers, data.events, spec.labels.as_of_dates()[-1]


def request_for(customers: pd.DataFrame, events: pd.DataFrame, customer_id: str, as_of) -> dict:
    """A /churn_risk body for one customer from canonical tables (what a client would send)."""
    from features.columns import CUSTOMER_ID, EVENT_TYPE, SIGNUP_DATE, TEXT, TIMESTAMP

    row = customers.loc[customers[CUSTOMER_ID] == customer_id].iloc[0]
    profile = {}
    for name, value in row.items():
        if name in (CUSTOMER_ID, SIGNUP_DATE, "churned", "churn_date"):
            continue
        profile[name] = None if pd.isna(value) else (value.item() if hasattr(value, "item") else value)
    signup = row.get(SIGNUP_DATE)
    mine = events[(events[CUSTOMER_ID] == customer_id) & (events[TIMESTAMP] < pd.Timestamp(as_of))]
    body_events = []
    for _, event in mine.iterrows():
        item = {"timestamp": pd.Timestamp(event[TIMESTAMP]).isoformat(), "type": str(event[EVENT_TYPE])}
        for name in ("duration_s", "amount"):
            if name in mine.columns:
                item[name] = None if pd.isna(event[name]) else float(event[name])
        if TEXT in mine.columns and not pd.isna(event[TEXT]) and str(event[TEXT]).strip():
            item["text"] = str(event[TEXT])
        body_events.append(item)
    return {
        "customer": {
            "customer_id": customer_id,
            "signup_date": None if pd.isna(signup) else pd.Timestamp(signup).isoformat(),
            **profile,
        },
        "events": body_events,
        "as_of": pd.Timestamp(as_of).isoformat(),
    }


def pick_customers(events: pd.DataFrame, as_of, n: int) -> list[str]:
    """Customers with several distinct texts before as_of (so sentiment feeds their features)."""
    from features.columns import CUSTOMER_ID, TEXT, TIMESTAMP

    before = events[events[TIMESTAMP] < pd.Timestamp(as_of)]
    texts = before.dropna(subset=[TEXT])
    counts = texts.groupby(CUSTOMER_ID, observed=True)[TEXT].nunique()
    totals = texts.groupby(CUSTOMER_ID, observed=True).size()
    eligible = counts[(counts >= 2) & (counts == totals)].index.astype(str).tolist()
    return sorted(eligible)[:n]


def offline_score(models, customers, events, customer_id, as_of) -> pd.Series:
    """The batch path for one customer: the engine on the loaded tables, then ChurnModel.score."""
    from features.columns import CUSTOMER_ID
    from features.engine import build_customer_features
    from features.pipeline import add_aspects, add_sentiment
    from models.aspect_scoring import CachedAspectLabeler

    churn, sentiment = models
    mine = events[events[CUSTOMER_ID] == customer_id]
    scored = add_sentiment(mine, sentiment)
    if churn.aspect_lineage is not None:
        scored = add_aspects(scored, CachedAspectLabeler(churn.aspect_lineage))
    one = customers[customers[CUSTOMER_ID] == customer_id]
    features = build_customer_features(scored, as_of, churn.schema, customers=one)
    return churn.score(features, top_k=current_settings().top_reasons).loc[customer_id]


# --- the real server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bento_tag(trained) -> str:
    from mlflow import MlflowClient

    from serving.build import build_bento

    # The versions trained here are the ones served, whatever another module promoted meanwhile.
    client = MlflowClient()
    for kind, version in trained["versions"].items():
        client.set_registered_model_alias(f"churnsense-{kind}", "champion", version)
    return build_bento()


@pytest.fixture(scope="session")
def event_store(trained, session_tmp: Path) -> str:
    """The service data ingested into a SQLite event store (the session server reads customers by id from it)."""
    from store.ingest import ingest_spec

    url = f"sqlite:///{session_tmp / 'event_store.db'}"
    ingest_spec(trained["spec"], url, rejects_path=session_tmp / "event_store.rejects.parquet")
    return url


@pytest.fixture(scope="session")
def postgres_event_store(trained, postgres_server: str, session_tmp: Path) -> str:
    """The same data in a database on the session's real PostgreSQL server."""
    from store.ingest import ingest_spec
    from tests.databases import new_postgres_database

    url = new_postgres_database(postgres_server)
    ingest_spec(trained["spec"], url, rejects_path=session_tmp / "pg_store.rejects.parquet")
    return url


@pytest.fixture(scope="session")
def postgres_backed_server(bento_tag: str, postgres_event_store: str, session_tmp: Path):
    """The Bento once more, one worker, its event store on PostgreSQL."""
    from serving.server import ServerProcess

    env = {
        **SERVER_LIMITS,
        **NO_TRACKING_STORE,
        "CHURNSENSE_STORE_URL": postgres_event_store,
        "CHURNSENSE_WORKERS": "1",
    }
    process = ServerProcess(bento_tag, env=env, log_path=session_tmp / "server_postgres.log")
    process.start(ready_timeout_s=240)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def server(bento_tag: str, event_store: str, session_tmp: Path):
    from serving.server import ServerProcess

    env = {**SERVER_LIMITS, **NO_TRACKING_STORE, "CHURNSENSE_STORE_URL": event_store}
    process = ServerProcess(bento_tag, env=env, log_path=session_tmp / "server.log")
    process.start(ready_timeout_s=240)
    yield process
    process.stop()
    assert process.process.poll() is not None


@pytest.fixture(scope="session")
def bentoml_batching_server(bento_tag: str, session_tmp: Path):
    """The same Bento with texts batched by BentoML behind /classify_texts (CHURNSENSE_SENTIMENT_BATCHING)."""
    from serving.server import ServerProcess

    env = {
        **SERVER_LIMITS,
        **NO_TRACKING_STORE,
        "CHURNSENSE_SENTIMENT_BATCHING": "bentoml",
        "CHURNSENSE_WORKERS": "1",
    }
    process = ServerProcess(bento_tag, env=env, log_path=session_tmp / "server_bentoml_batching.log")
    process.start(ready_timeout_s=240)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
