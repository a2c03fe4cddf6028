"""A spec of several tables on every path: train, score on the local engine and on Spark, ingest into the event
store and score from it. Each gives the scores of the same data joined by hand into one table, and rows that
cannot be used land in the rejects file naming their source."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.unit.test_sources import make_tables, multi_spec, prejoined_spec

AS_OF = dt.date(2024, 6, 20)
SOURCE_TABLES = ("accounts", "extra", "subscriptions", "tickets", "usage", "invoices")
SNAPSHOTS = [f"2023-{m:02d}-01" for m in range(10, 13)] + [f"2024-{m:02d}-01" for m in range(1, 6)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Clean tables (a multi-source spec and its hand-joined twin), a dirty copy, and a churn model trained on
    the multi-source spec, in the session's MLflow store."""
    from training.churn import train_churn
    from training.churn_config import ChurnConfig

    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("sources_cache")
        patch.setenv("CHURNSENSE_CACHE_DIR", str(cache))
        clean = tmp_path_factory.mktemp("sources_clean")
        tables = make_tables(clean, n=400)
        multi = multi_spec(clean, SNAPSHOTS)
        joined = prejoined_spec(clean, tables, SNAPSHOTS)
        dirty = tmp_path_factory.mktemp("sources_dirty")
        make_tables(dirty, n=400)
        with open(dirty / "tickets.csv", "a") as handle:
            handle.write("A-001,2024-01-05 10:00:00,high,3.5,extra-field\n")
            handle.write("A-999,2024-01-06 10:00:00,high,1.0\n")
        with open(dirty / "usage.csv", "a") as handle:
            handle.write("S-X404,2024-01-05,3\n")
        config = ChurnConfig(search={"max_trials": 2})
        model = train_churn(multi, config)
    dirty_spec = multi_spec(dirty, SNAPSHOTS)
    return {"multi": multi, "joined": joined, "dirty": dirty_spec, "model": model.model_uri, "cache": cache}


@pytest.fixture(autouse=True)
def same_cache(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNSENSE_CACHE_DIR", str(world["cache"]))


def _score(spec: Path, out: Path, world: dict, **options):
    from batch import read_scores, score_customers

    summary = score_customers(spec, AS_OF, out, model_uri=world["model"], progress=False, **options)
    return summary, read_scores(out).sort_values("customer_id").reset_index(drop=True)


@pytest.mark.slow
def test_local_batch_scores_equal_those_of_the_hand_joined_table(world: dict, tmp_path: Path) -> None:
    _, multi = _score(world["multi"], tmp_path / "multi", world)
    _, joined = _score(world["joined"], tmp_path / "joined", world)
    assert len(multi) > 20 and multi["churn_risk"].nunique() > 5
    pd.testing.assert_frame_equal(multi, joined, check_exact=True)


@pytest.mark.slow
def test_rejected_rows_name_their_source_in_the_batch_rejects_file(world: dict, tmp_path: Path) -> None:
    summary, _ = _score(world["dirty"], tmp_path / "dirty", world)
    rejects = pd.read_parquet(summary.rejects_path)
    reasons = sorted(rejects["reason"])
    assert len(reasons) == 3, reasons
    assert "'tickets'" in reasons[0] and "row has 5 fields" in reasons[0]
    assert "'tickets'" in reasons[1] and "matches no customer" in reasons[1]
    assert "'usage'" in reasons[2] and "not in the link table" in reasons[2]
    assert summary.n_rejected == 3


@pytest.mark.slow
@pytest.mark.spark
def test_spark_scores_equal_local_on_a_multi_source_spec(spark, world: dict, tmp_path: Path) -> None:
    local_summary, local = _score(world["dirty"], tmp_path / "local", world)
    spark_summary, on_spark = _score(world["dirty"], tmp_path / "spark", world, engine="spark")
    pd.testing.assert_frame_equal(on_spark, local, check_exact=True)
    assert spark_summary.n_rejected == local_summary.n_rejected == 3


@pytest.mark.slow
def test_ingest_then_score_from_the_store_equals_scoring_the_files(world: dict, tmp_path: Path) -> None:
    from batch import read_scores, score_store
    from store.ingest import ingest_spec

    url = f"sqlite:///{tmp_path / 'store.db'}"
    ingested = ingest_spec(world["dirty"], url, rejects_path=tmp_path / "ingest.rejects.parquet")
    assert ingested.rejected == 3
    score_store(url, AS_OF, tmp_path / "from_store", model_uri=world["model"], progress=False)
    from_store = read_scores(tmp_path / "from_store").sort_values("customer_id").reset_index(drop=True)
    _, from_files = _score(world["dirty"], tmp_path / "from_files", world)
    pd.testing.assert_frame_equal(from_store, from_files, check_exact=True)


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_ravenstack_spec_reads_all_five_tables_trains_and_scores(tmp_path: Path) -> None:
    from batch import read_scores, score_customers
    from features.pipeline import load_data
    from features.spec import load_spec
    from features.validate import validate_spec_file
    from tests.shared_data import shared_file
    from training.churn import train_churn
    from training.churn_config import ChurnConfig

    folder = shared_file("ravenstack_saas", "ravenstack_accounts.csv").parent
    spec_path = Path(__file__).resolve().parents[2] / "configs" / "ravenstack-events.spec.yaml"
    assert not validate_spec_file(spec_path).errors
    data = load_data(load_spec(spec_path))
    rows = sum(
        len(pd.read_csv(folder / f"ravenstack_{name}.csv"))
        for name in ("support_tickets", "subscriptions", "feature_usage")
    )
    assert len(data.rejects) == 0 and len(data.events) == rows
    assert {"ticket_urgent", "subscription", "usage"} <= set(data.events["event_type"].astype(str))
    churned = pd.read_csv(folder / "ravenstack_churn_events.csv")["account_id"].nunique()
    assert data.customers["churn_date"].notna().sum() == churned
    model = train_churn(spec_path, ChurnConfig(search={"max_trials": 2}))
    assert 0.0 <= model.metrics["roc_auc"] <= 1.0
    score_customers(
        spec_path, dt.date(2024, 10, 1), tmp_path / "scores", model_uri=model.model_uri, progress=False
    )
    scores = read_scores(tmp_path / "scores")
    assert len(scores) > 100 and scores["churn_risk"].between(0, 1).all()


@pytest.mark.slow
def test_the_service_scores_payload_events_typed_as_their_sources_like_the_batch(
    world: dict, tmp_path: Path
) -> None:
    """A support tool sends each event with the type its source gives it (`ticket_high`, `usage`, `invoice`) and
    its own value fields: the online path gives the batch job's numbers for the customer, bit for bit."""
    from models.churn import ChurnModel
    from serving.answers import ModelVersions
    from serving.schemas import ChurnRiskRequest
    from serving.scoring import score_requests

    folder = world["multi"].parent
    read = {name: pd.read_csv(folder / f"{name}.csv", dtype={"seats": "float64"}) for name in SOURCE_TABLES}
    owner = read["subscriptions"].set_index("sub")["owner"]
    _, batch = _score(world["multi"], tmp_path / "batch", world, evidence=True)
    churn = ChurnModel.load(world["model"])
    cutoff = pd.Timestamp(AS_OF)
    requests = []
    for customer_id in batch["customer_id"].iloc[::25]:
        account = read["accounts"].set_index("account_id").loc[customer_id]
        extra = read["extra"].set_index("account")
        events = []
        for _, row in read["tickets"][read["tickets"]["account_id"] == customer_id].iterrows():
            events.append(
                {"timestamp": row["opened"], "type": f"ticket_{row['priority']}", "hours": row["hours"]}
            )
        usage = read["usage"][read["usage"]["subscription"].map(owner) == customer_id]
        events += [
            {"timestamp": r["day"], "type": "usage", "count": float(r["count"])} for _, r in usage.iterrows()
        ]
        invoices = read["invoices"][read["invoices"]["customer"] == customer_id]
        events += [
            {"timestamp": r["at"], "type": "invoice", "amount": r["amount"]} for _, r in invoices.iterrows()
        ]
        events = [e for e in events if pd.Timestamp(e["timestamp"]) < cutoff]
        profile = {
            "customer_id": customer_id,
            "signup_date": account["signup"],
            "plan": account["plan"],
            "seats": float(account["seats"]),
            "nps": float(extra["nps"][customer_id]) if customer_id in extra.index else None,
            "region": extra["region"][customer_id] if customer_id in extra.index else None,
        }
        body = {"customer": profile, "events": events, "as_of": cutoff.isoformat()}
        requests.append(ChurnRiskRequest.model_validate(body))
    versions = ModelVersions(churn="1", sentiment="1", sentiment_scoring_id="none")
    answers = score_requests(requests, churn.schema, churn.score_rows, {}, versions)
    expected = batch.set_index("customer_id")["churn_risk"]
    assert len(answers) >= 5
    for answer in answers:
        assert answer.churn_risk == expected[answer.customer_id], answer.customer_id
    # The events behind each reason, too: the same keys on both paths (no text or sentiment fields the data
    # set does not have), and the same events.
    reasons = batch.set_index("customer_id")["reasons"]
    with_evidence = 0
    for answer in answers:
        online = [r.evidence.model_dump() if r.evidence else None for r in answer.reasons]
        offline = [json.loads(r["evidence"]) if r["evidence"] else None for r in reasons[answer.customer_id]]
        assert online == offline, answer.customer_id
        with_evidence += sum(e is not None and e["total"] > 0 for e in online)
    assert with_evidence >= 5
