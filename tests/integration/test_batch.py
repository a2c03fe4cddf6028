"""Batch scoring: local and Spark engines against direct in-process scoring, chunking, crashes, rejects, cache.

A module fixture trains a tiny random-BERT sentiment model and a small churn model (with text-sentiment
features) on simulator data into the session's MLflow store, by explicit version (nothing is promoted, so other
test modules' champions are left alone). "Direct" scoring is the offline path written out by hand:
loaders -> `build_customer_features` -> `ChurnModel.score`, texts through the shared sentiment cache.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_dir(session_tmp: Path) -> Path:
    from features.simulate import write_demo_data

    folder = session_tmp / "batch_sim"
    write_demo_data(folder, n_customers=1500, seed=5)
    return folder


@pytest.fixture(scope="module")
def models(sim_dir: Path, session_tmp: Path) -> dict:
    """Sentiment and churn models registered in the session store; the churn model uses text sentiment."""
    from models.text_scoring import CachedTextScorer, sentiment_lineage
    from tests.sentiment_helpers import train_tiny_sentiment
    from training.churn import train_churn
    from training.churn_config import ChurnConfig

    sentiment = train_tiny_sentiment(session_tmp / "batch_sentiment")
    lineage = sentiment_lineage(sentiment.model_uri)
    cache_dir = session_tmp / "batch_cache"
    cached = CachedTextScorer(lineage, cache_dir)
    classifier = cached.classifier
    version = lineage.scoring_id

    churn = train_churn(sim_dir / "spec.yaml", ChurnConfig(search={"max_trials": 3}), sentiment_scorer=cached)
    return {
        "churn_uri": churn.model_uri,
        "sentiment_uri": sentiment.model_uri,
        "sentiment_version": version,
        "classifier": classifier,
        "cache_dir": cache_dir,
        "as_of": dt.date(2024, 12, 1),
    }


@pytest.fixture(scope="module")
def churn(models):
    from models.churn import ChurnModel

    return ChurnModel.load(models["churn_uri"])


# Injected rows: (file part, 0-based data row in that file, what is wrong, the loader's reason).
BAD_EVENTS = [
    (2, 5, {"timestamp": "not a date"}, "timestamp is missing, not a date, or outside 1678-2261"),
    (2, 9, {"customer_id": ""}, "customer id is empty"),
    (2, 14, {"amount": "abc"}, "amount is not a number"),
    (1, 3, {"event_type": " "}, "event type is empty"),
]


# Injected customers (all new ids, so no event of theirs is touched): reason -> (id, CSV line).
BAD_CUSTOMERS = {
    "row has 10 fields, the header has 9: values would be shifted": (
        "BAD-SHIFT",
        "{id},2024-03-01,,basic,extra,19.99,monthly,direct_debit,north,41",
    ),
    "row has 8 fields, the header has 9: values are missing": (
        "BAD-SHORT",
        "{id},2024-03-01,,basic,19.99,monthly,direct_debit,north",
    ),
    "monthly_price: '$19.99' is not a finite number": (
        "BAD-MONEY",
        "{id},2024-03-01,,basic,$19.99,monthly,direct_debit,north,41",
    ),
}
EXTRA_FIELD_EVENT = 20  # 0-based data row of events/part-1.csv that gets a field too many
N_REJECTED = len(BAD_EVENTS) + 2 + len(BAD_CUSTOMERS) + 1


@pytest.fixture(scope="module")
def dirty_dir(sim_dir: Path, session_tmp: Path) -> Path:
    """The simulator data as CSV in several files (a glob), with rows that fail validation."""
    folder = session_tmp / "batch_dirty"
    (folder / "events").mkdir(parents=True)
    events = pd.read_parquet(sim_dir / "events.parquet")
    events = events.astype({c: "string" for c in ("customer_id", "event_type", "channel", "text")})
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    events = events.astype({"timestamp": "string", "amount": "string"})
    half = len(events) // 2
    parts = {1: events.iloc[:half].reset_index(drop=True), 2: events.iloc[half:].reset_index(drop=True)}
    for part, row, change, _ in BAD_EVENTS:
        for column, value in change.items():
            parts[part].loc[row, column] = value
    for part, frame in parts.items():
        frame.to_csv(folder / "events" / f"part-{part}.csv", index=False)
    customers = (sim_dir / "customers.csv").read_text().rstrip("\n").splitlines()
    header = customers[0].split(",")
    blank = [
        "" if name == "customer_id" else value
        for name, value in zip(header, customers[1].split(","), strict=True)
    ]
    customers += [",".join(blank), customers[2]]  # no id; a duplicate of the second customer (first kept)
    # Rows a real file has: a field too many (every value after it shifted right), a field too few, and a
    # price the model reads as a number written as money. Each is rejected with its reason, never scored.
    for new_id, line in BAD_CUSTOMERS.values():
        customers.append(line.format(id=new_id))
    (folder / "customers.csv").write_text("\n".join(customers) + "\n")
    part = folder / "events" / "part-1.csv"
    lines = part.read_text().split("\n")
    lines[1 + EXTRA_FIELD_EVENT] += ",surplus"  # one event row with a field too many
    part.write_text("\n".join(lines))
    spec = yaml.safe_load((sim_dir / "spec.yaml").read_text())
    spec["events"]["path"] = "events/*.csv"
    spec.pop("reviews", None)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder


def direct_features(spec_path: Path, models: dict, churn) -> pd.DataFrame:
    """The offline path by hand: loaders and the feature engine, texts via the shared sentiment cache."""
    from features.engine import build_customer_features
    from features.pipeline import load_data
    from features.spec import load_spec
    from models.text_scoring import CachedTextScorer, SentimentLineage

    cached = CachedTextScorer(
        SentimentLineage.of(models["classifier"]), models["cache_dir"], models["classifier"]
    )
    data = load_data(
        load_spec(spec_path), sentiment_scorer=cached, numeric_columns=churn.schema.profile_numeric
    )
    return build_customer_features(data.events, models["as_of"], churn.schema, customers=data.customers)


def direct_scores(spec_path: Path, models: dict, churn) -> pd.DataFrame:
    """Scores of the customers the batch job scores: those who were customers at as_of."""
    from features.labels import ineligible_reasons
    from features.pipeline import load_data
    from features.spec import load_spec

    spec = load_spec(spec_path)
    data = load_data(spec, with_text=False, numeric_columns=churn.schema.profile_numeric)
    why_not = ineligible_reasons(data.customers, data.events, models["as_of"], spec.events.churn_event)
    scores = churn.score(direct_features(spec_path, models, churn), top_k=5).sort_index()
    return scores[why_not.reindex(scores.index.astype(str)).isna().to_numpy()]


def run_local(spec: Path, out: Path, models: dict, **options):
    from batch import score_customers

    options.setdefault("cache_dir", models["cache_dir"])
    return score_customers(
        spec,
        models["as_of"],
        out,
        model_uri=models["churn_uri"],
        sentiment_model=models["sentiment_uri"],
        **options,
    )


def assert_same_scores(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same customers, churn_risk within 1e-9, same bands, same reasons (features, values, contributions)."""
    got = got.set_index("customer_id").sort_index()
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(
        got["churn_risk"].to_numpy(), expected["churn_risk"].to_numpy(), rtol=0, atol=1e-9
    )
    assert (got["risk_band"].to_numpy() == expected["risk_band"].astype(str).to_numpy()).all()
    for mine, theirs in zip(got["reasons"], expected["reasons"], strict=True):
        mine = list(mine)
        assert [r["feature"] for r in mine] == [r["feature"] for r in theirs]
        np.testing.assert_allclose(
            [r["contribution"] for r in mine], [r["contribution"] for r in theirs], rtol=0, atol=1e-9
        )


@pytest.fixture(scope="module")
def local_dirty(dirty_dir: Path, models: dict, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("local_dirty") / "scores.parquet"
    summary = run_local(dirty_dir / "spec.yaml", out, models, chunk_customers=400)
    return summary, out


@pytest.fixture(scope="module")
def local_sim(sim_dir: Path, models: dict, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("local_sim") / "scores.parquet"
    summary = run_local(sim_dir / "spec.yaml", out, models, chunk_customers=300)
    return summary, out


# --- fast: no models ---------------------------------------------------------------------------------------


def test_sentiment_cache_scores_each_distinct_text_once(tmp_path: Path):
    from models.sentiment_cache import score_texts_cached

    calls: list[list[str]] = []

    def scorer(texts):
        calls.append(list(texts))
        return np.array([len(t) / 100 for t in texts])

    first = score_texts_cached(["good", "bad", None, "good", "meh"], scorer, tmp_path, "v1")
    assert sorted(calls[0]) == ["bad", "good", "meh"]
    np.testing.assert_array_equal(first[[0, 1, 3, 4]], [0.04, 0.03, 0.04, 0.03])
    assert np.isnan(first[2])
    again = score_texts_cached(["meh", "good", "new"], scorer, tmp_path, "v1")
    assert calls[1:] == [["new"]]
    np.testing.assert_array_equal(again, [0.03, 0.04, 0.03])
    score_texts_cached(["good"], scorer, tmp_path, "v2")  # another model version: its own cache
    assert calls[2:] == [["good"]]
    parts = list((tmp_path / "sentiment" / "v1").glob("part-*.parquet"))
    assert pq.read_table(parts[0]).schema.names == ["text_hash", "score"]


def test_bucket_of_is_stable_and_reads_ids_as_the_loaders_do():
    import pyarrow as pa

    from batch.buckets import bucket_of

    texts = bucket_of(pa.array(["7", " 7 ", "8", None]), 16)
    numbers = bucket_of(pa.array([7, 7, 8, None]), 16)
    encoded = bucket_of(pa.array(["7", "7", "8", None]).dictionary_encode(), 16)
    assert list(texts) == list(numbers) == list(encoded)
    assert texts[3] == 0
    here = bucket_of(pa.array([str(i) for i in range(1000)]), 7)
    assert set(here) == set(range(7))
    # Stable across processes (Spark workers, pool workers, a rerun): not Python's salted hash().
    import json
    import os
    import subprocess
    import sys

    code = "import json, pyarrow as pa; from batch.buckets import bucket_of; "
    code += "print(json.dumps(bucket_of(pa.array([str(i) for i in range(1000)]), 7).tolist()))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert json.loads(other.stdout) == here.tolist()


# --- local engine ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_scores_are_row_independent(sim_dir: Path, models: dict, churn):
    """Chunking is only safe if a customer's score does not depend on the other rows scored with it."""
    features = direct_features(sim_dir / "spec.yaml", models, churn)
    some = features.sample(200, random_state=1).iloc[::-1]
    alone = churn.score(some, top_k=5)
    together = churn.score(features, top_k=5).loc[alone.index]
    np.testing.assert_array_equal(alone["churn_risk"].to_numpy(), together["churn_risk"].to_numpy())
    assert alone["reasons"].tolist() == together["reasons"].tolist()


@pytest.mark.slow
def test_local_engine_equals_direct_scoring_on_multi_file_csv(
    dirty_dir: Path, models: dict, churn, local_dirty
):
    summary, out = local_dirty
    from batch import read_scores

    got = read_scores(out)
    from batch.output import RESULT_COLUMNS

    assert list(got.columns) == RESULT_COLUMNS
    assert (got["as_of"] == models["as_of"]).all()
    assert (got["model_version"] == churn.version).all()
    # Both models named on every row: the churn version and the sentiment model behind its text features.
    assert (got["sentiment_scoring_id"] == churn.sentiment_lineage.scoring_id).all()
    assert (got["sentiment_model_version"] == churn.sentiment_lineage.version).all()
    assert got["eligible"].all() and got["ineligible_reason"].isna().all()
    assert summary.ineligible_by_reason  # the simulator has churned customers: counted, not scored
    assert summary.n_buckets > 2
    assert_same_scores(got, direct_scores(dirty_dir / "spec.yaml", models, churn))
    assert summary.n_customers == len(got) and sum(summary.band_counts.values()) == len(got)
    text = summary.render()
    assert "customers/s" in text and f"rejected input rows: {N_REJECTED}" in text
    # Rows in = rows scored + rows not customers at as_of + rows rejected, counted from what was read.
    customer_rows = len((dirty_dir / "customers.csv").read_text().splitlines()) - 1
    event_rows = sum(len(pd.read_csv(p, usecols=[0])) for p in (dirty_dir / "events").glob("*.csv"))
    assert summary.rows_in == {"customers": customer_rows, "events": event_rows}
    assert summary.unaccounted_customer_rows == 0
    assert f"customer rows read: {customer_rows:,} = {summary.n_customers:,} scored" in text


@pytest.mark.slow
def test_rejected_rows_land_in_the_rejects_file_with_reasons(dirty_dir: Path, local_dirty, churn):
    from batch import read_scores
    from features.pipeline import load_data
    from features.spec import load_spec

    summary, out = local_dirty
    rejects = pd.read_parquet(summary.rejects_path)
    assert summary.rejects_path == out.with_name("scores.rejects.parquet")
    spec = load_spec(dirty_dir / "spec.yaml")
    expected = load_data(spec, with_text=False, numeric_columns=churn.schema.profile_numeric).rejects
    count = lambda frame: frame.groupby(["table", "reason"]).size().to_dict()  # noqa: E731
    assert count(rejects) == count(expected)
    assert summary.n_rejected == len(rejects) == N_REJECTED
    events = rejects[rejects["table"] == "events"].set_index("reason")
    for part, row, _, reason in BAD_EVENTS:
        assert events.loc[reason, "file"].endswith(f"events/part-{part}.csv")
        assert events.loc[reason, "row"] == row
    customers = rejects[rejects["table"] == "customers"].set_index("reason")
    lines = (dirty_dir / "customers.csv").read_text().splitlines()
    assert customers.loc["customer id is empty", "row"] == len(lines) - 3 - len(BAD_CUSTOMERS)
    assert customers.loc["duplicate customer id (first kept)", "row"] == len(lines) - 2 - len(BAD_CUSTOMERS)
    for reason, (customer_id, _) in BAD_CUSTOMERS.items():
        assert customers.loc[reason, "customer_id"] == customer_id
        assert (
            customers.loc[reason, "row"]
            == lines.index(next(ln for ln in lines if ln.startswith(customer_id))) - 1
        )
    shifted = events.loc[[r for r in events.index if r.startswith("row has ")]]
    assert len(shifted) == 1 and shifted["row"].iloc[0] == EXTRA_FIELD_EVENT
    assert shifted["file"].iloc[0].endswith("events/part-1.csv")
    scored = set(read_scores(out)["customer_id"])
    assert not scored & {customer_id for customer_id, _ in BAD_CUSTOMERS.values()}


@pytest.mark.slow
def test_chunking_does_not_change_results(sim_dir: Path, models: dict, churn, local_sim, tmp_path: Path):
    from batch import read_scores

    summary, out = local_sim
    one_bucket = run_local(
        sim_dir / "spec.yaml", tmp_path / "one.parquet", models, chunk_customers=10**6, workers=1
    )
    assert summary.n_buckets == 5 and one_bucket.n_buckets == 1
    pd.testing.assert_frame_equal(read_scores(out), read_scores(one_bucket.out))
    assert_same_scores(read_scores(out), direct_scores(sim_dir / "spec.yaml", models, churn))


@pytest.mark.slow
def test_killed_run_leaves_no_output_and_a_rerun_resumes_to_the_same_result(
    sim_dir: Path, models: dict, local_sim, tmp_path: Path
):
    from typer.testing import CliRunner

    from batch import read_scores
    from batch.plan import SLEEP_HOOK_ENV
    from churnsense.cli import app

    out = tmp_path / "scores.parquet"
    args = [
        "score",
        "--spec", str(sim_dir / "spec.yaml"),
        "--as-of", models["as_of"].isoformat(),
        "--out", str(out),
        "--model", models["churn_uri"],
        "--sentiment-model", models["sentiment_uri"],
        "--cache-dir", str(models["cache_dir"]),
        "--chunk-customers", "300",
        "--workers", "1",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, SLEEP_HOOK_ENV: "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "churnsense.cli", *args], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    work_root = tmp_path / ".scores.parquet.work"
    deadline = time.monotonic() + 120
    try:
        while not list(work_root.glob("*/scored/bucket-*.parquet")):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no bucket finished within 120 s"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers, mid-run
        process.wait()
    assert not out.exists()
    assert not out.with_name("scores.rejects.parquet").exists()
    assert not list(tmp_path.glob(".scores.parquet.*.tmp"))
    done = len(list(work_root.glob("*/scored/bucket-*.parquet")))
    assert done == 1  # the hook holds the only worker after its first bucket

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"resumed: {done} of 5 buckets were already done" in result.output
    pd.testing.assert_frame_equal(read_scores(out), read_scores(local_sim[1]))
    assert not work_root.exists()


@pytest.mark.slow
def test_second_run_scores_no_text_twice(sim_dir: Path, models: dict, tmp_path: Path):
    from batch import read_scores
    from features.pipeline import load_data
    from features.spec import load_spec
    from models.sentiment_cache import cache_folder

    scored: list[str] = []

    def counting(texts):
        scored.extend(texts)
        return models["classifier"](texts)

    cache = tmp_path / "cache"
    first = run_local(
        sim_dir / "spec.yaml", tmp_path / "a.parquet", models, cache_dir=cache, text_scorer=counting
    )
    events = load_data(load_spec(sim_dir / "spec.yaml"), with_text=True).events
    from features.text import normalise_texts

    distinct = {t for t in normalise_texts(events["text"]) if t is not None}
    assert len(scored) == len(set(scored)) == len(distinct) > 0
    scored.clear()
    second = run_local(
        sim_dir / "spec.yaml", tmp_path / "b.parquet", models, cache_dir=cache, text_scorer=counting
    )
    assert scored == []
    pd.testing.assert_frame_equal(read_scores(first.out), read_scores(second.out))
    parts = list(cache_folder(cache, models["sentiment_version"]).glob("part-*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == len(distinct)


# --- Spark engine ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spark
def test_spark_engine_equals_local_engine_and_direct_scoring(
    spark, dirty_dir: Path, models: dict, churn, local_dirty, tmp_path: Path
):
    from batch import read_scores, score_customers

    parts_before = sorted(models["cache_dir"].rglob("part-*.parquet"))
    out = tmp_path / "spark_scores"
    # A scratch folder a SIGKILLed run left (its driver is gone): customer data, removed by the next run.
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f".spark_scores.spark-{dead.pid}-0badc0de"
    (orphan / "stage").mkdir(parents=True)
    (orphan / "stage" / "part-0.parquet").write_bytes(b"customer rows")
    summary = score_customers(
        dirty_dir / "spec.yaml",
        models["as_of"],
        out,
        engine="spark",
        model_uri=models["churn_uri"],
        sentiment_model=models["sentiment_uri"],
        cache_dir=models["cache_dir"],
        chunk_customers=400,
    )
    assert out.is_dir() and summary.engine.startswith("spark")
    got = read_scores(out)
    pd.testing.assert_frame_equal(got, read_scores(local_dirty[1]))
    assert_same_scores(got, direct_scores(dirty_dir / "spec.yaml", models, churn))
    local_rejects = pd.read_parquet(local_dirty[0].rejects_path)
    spark_rejects = pd.read_parquet(summary.rejects_path)
    key = ["table", "file", "row"]
    pd.testing.assert_frame_equal(
        spark_rejects.sort_values(key).reset_index(drop=True),
        local_rejects.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert summary.band_counts == local_dirty[0].band_counts and summary.n_rejected == N_REJECTED
    assert summary.rows_in == local_dirty[0].rows_in and summary.unaccounted_customer_rows == 0
    assert sorted(models["cache_dir"].rglob("part-*.parquet")) == parts_before  # warm cache: no text rescored
    assert not list(tmp_path.glob(".spark_scores.*"))


# --- files a real job meets ----------------------------------------------------------------------------------


def _copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(folder, copy)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["not parquet", "truncated"])
def test_an_unreadable_parquet_file_is_a_one_line_error_and_leaves_nothing(
    sim_dir: Path, models: dict, tmp_path: Path, damage: str, capsys, monkeypatch
):
    from tests.cli import run_cli

    data = _copy_of(sim_dir, tmp_path)
    events = data / "events.parquet"
    if damage == "truncated":
        events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])
    else:
        events.write_text("customer_id,timestamp\nC1,2024-01-01\n")
    out = tmp_path / "out" / "scores.parquet"
    # In this process, through the console script's `main()` (its error handling, its exit code).
    code, _, stderr = run_cli(
        ["score", "--spec", str(data / "spec.yaml"), "--as-of", "2024-12-01", "--out", str(out),
         "--model", models["churn_uri"], "--cache-dir", str(models["cache_dir"]), "--no-progress"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {events}: cannot read Parquet " + errors[0].split("cannot read Parquet ", 1)[1]
    ]
    assert "Traceback" not in stderr
    assert (
        not out.exists() and [p.name for p in out.parent.iterdir()] == []
    )  # no work folder with customer data


@pytest.mark.slow
def test_a_csv_byte_that_is_not_utf8_is_named_by_line(dirty_dir: Path, models: dict, tmp_path: Path):
    from features.io import DataLoadError

    data = _copy_of(dirty_dir, tmp_path)
    lines = (data / "customers.csv").read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b",", b",\xff", 1)
    (data / "customers.csv").write_bytes(b"\n".join(lines))
    with pytest.raises(DataLoadError, match=r"customers\.csv: line 8, byte \d+ \(0xff\) is not valid utf-8"):
        run_local(data / "spec.yaml", tmp_path / "scores.parquet", models)
    assert not (tmp_path / "scores.parquet").exists() and not list(tmp_path.glob(".scores.parquet.work"))


@pytest.mark.slow
def test_events_of_customers_not_in_the_customers_table_are_rejected_not_dropped(
    dirty_dir: Path, models: dict, tmp_path: Path
):
    from features.io import UNKNOWN_CUSTOMER

    data = _copy_of(dirty_dir, tmp_path)
    part = data / "events" / "part-2.csv"
    events = pd.read_csv(part, dtype=str, keep_default_na=False)
    strangers = events.iloc[:3].copy()
    strangers["customer_id"] = ["NOBODY-1", "NOBODY-2", "NOBODY-1"]
    pd.concat([events, strangers]).to_csv(part, index=False)
    summary = run_local(data / "spec.yaml", tmp_path / "scores.parquet", models, chunk_customers=400)
    rejects = pd.read_parquet(summary.rejects_path)
    mine = rejects[rejects["reason"] == UNKNOWN_CUSTOMER]
    assert sorted(mine["customer_id"]) == ["NOBODY-1", "NOBODY-1", "NOBODY-2"]
    assert (mine["file"] == str(part)).all() and sorted(mine["row"]) == [
        len(events),
        len(events) + 1,
        len(events) + 2,
    ]
    assert summary.rejected_by_reason[f"events: {UNKNOWN_CUSTOMER}"] == 3


# --- from the event store ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scoring_the_event_store_equals_scoring_the_files(
    sim_dir: Path, models: dict, local_sim, store_url: str, tmp_path: Path, request: pytest.FixtureRequest
):
    """The same customers from the store (SQLite and PostgreSQL, local engine; Spark on SQLite) score bit for bit
    as from the files they were ingested from."""
    from batch import read_scores, score_store
    from store.ingest import ingest_spec

    ingest_spec(sim_dir / "spec.yaml", store_url, rejects_path=tmp_path / "ingest.rejects.parquet")
    expected = read_scores(local_sim[1]).sort_values("customer_id").reset_index(drop=True)
    engines = ["local", "spark"] if store_url.startswith("sqlite") else ["local"]
    for engine in engines:
        if engine == "spark":
            request.getfixturevalue("spark")  # the session's local Spark
        out = tmp_path / f"store_scores_{engine}"
        summary = score_store(
            store_url,
            models["as_of"],
            out,
            engine=engine,
            model_uri=models["churn_uri"],
            sentiment_model=models["sentiment_uri"],
            cache_dir=models["cache_dir"],
            chunk_customers=300,
        )
        got = read_scores(out).sort_values("customer_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        assert summary.n_customers == local_sim[0].n_customers and summary.unaccounted_customer_rows == 0
        assert not [p for p in tmp_path.iterdir() if ".store-" in p.name]  # the extract is gone


def test_an_aspect_model_without_evidence_is_refused(sim_dir: Path, models: dict, tmp_path: Path):
    """`--aspect-model` names what evidence texts are about: alone it would do nothing, so it is an error."""
    from batch import score_customers
    from batch.plan import BatchError

    out = tmp_path / "scores.parquet"
    with pytest.raises(BatchError, match="--aspect-model .* needs --evidence"):
        score_customers(
            sim_dir / "spec.yaml", "2024-12-01", out, model_uri=models["churn_uri"],
            cache_dir=models["cache_dir"], aspect_model="models:/churnsense-aspects@champion",
        )  # fmt: skip
    assert not out.exists()


def test_time_to_churn_columns_hold_nulls_never_nan():
    """Where there is no time-to-churn answer (no survival model, an ineligible customer, a curve that never
    crosses one half) the output holds null, as the service answers null: SQL's IS NULL and AVG see them."""
    import datetime as dt
    from types import SimpleNamespace

    from batch.output import result_table

    scored = pd.DataFrame(
        {
            "churn_risk": [0.1, 0.2, 0.3], "risk_band": ["low", "low", "medium"], "reasons": [[], [], []],
            "base_value": 0.0, "other_contribution": 0.0,
        },
        index=pd.Index(["a", "b", "c"], name="customer_id"),
    )  # fmt: skip
    plan = SimpleNamespace(sentiment=None, as_of=dt.date(2024, 11, 1), model_version="3", aspect_model=None)
    eligible = np.array([True, True, False])
    why_not = np.array([None, None, "churned before as_of"], dtype=object)
    times = pd.DataFrame(
        {
            "survival_30d": [0.9, np.nan, 0.5], "survival_60d": [0.8, np.nan, 0.4], "survival_90d": [0.7, np.nan, 0.3],
            "expected_days_to_churn": [np.nan, np.nan, 12.0], "expected_days_more_than": [300.0, np.nan, np.nan],
        },
        index=scored.index,
    )  # fmt: skip
    ids = scored.index
    scored, times = scored[eligible], times[eligible]  # only the eligible customers are scored
    for table in (
        result_table(ids, scored, plan, eligible, why_not, times, "7"),
        result_table(ids, scored, plan, eligible, why_not),
    ):
        for name in ("survival_30d", "expected_days_to_churn", "expected_days_more_than"):
            column = table.column(name)
            values = column.to_numpy(zero_copy_only=False)
            assert column.null_count == int(np.isnan(values).sum()), name  # every missing value is a null
    with_times = result_table(ids, scored, plan, eligible, why_not, times, "7")
    assert with_times.column("survival_30d").to_pylist() == [0.9, None, None]  # c: ineligible
    assert with_times.column("expected_days_more_than").to_pylist() == [300.0, None, None]
