"""One truth per customer: every path gives bit-identical scores for the same (customer, as_of) and models.

Paths, all with the real settings (int8 sentiment as served, texts present, several `as_of` dates):

- the training frame (`training.churn` loaders, labels and feature engine, texts through the cached scorer);
- the real server: `/churn_risk` alone, `/churn_risk_batch`, and `/churn_risk` while other clients flood
  `/sentiment` with other texts (their texts share forward passes with this customer's);
- the local batch engine (2 worker processes, a fresh sentiment cache scored in the driver);
- the Spark engine (texts scored in Spark's Python workers, another fresh cache).

"Bit-identical" means `==` on floats: churn_risk, every reason's feature, value and contribution, base_value and
other_contribution. Each answer also names both models. This test failed before text scoring was made batch
invariant (int8 dynamic quantisation and padded batches changed a text's score with its neighbours).
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from pathlib import Path

import pandas as pd
import pytest

from models.survival import ANSWER_COLUMNS
from tests.served_models import pick_customers, request_for

pytestmark = pytest.mark.slow

N_SERVED = 12  # customers per as_of sent over HTTP (each in three ways)


@pytest.fixture(scope="module")
def truth(trained, models, tmp_path_factory) -> dict:
    """The training frame's scores per (as_of, customer): the reference every other path must equal."""
    from features.spec import load_spec
    from models.text_scoring import CachedTextScorer
    from training.churn_config import ChurnConfig
    from training.churn_data import label_training_data, load_training_data

    churn, _ = models
    spec = load_spec(trained["spec"])
    from models.aspect_scoring import CachedAspectLabeler

    cache = tmp_path_factory.mktemp("skew_cache")
    scorer = CachedTextScorer(churn.sentiment_lineage, cache)
    assert churn.aspect_lineage is not None, "the served churn model counts negative texts per aspect"
    data = load_training_data(spec, scorer, CachedAspectLabeler(churn.aspect_lineage, cache))
    frame, schema = label_training_data(data, ChurnConfig().min_positives)
    assert schema == churn.schema  # the frame is built exactly as the model's was
    # Texts per aspect (the tiny sentiment model is never negative enough for `n_negative_about_*`).
    about = [f for f in schema.feature_names() if f.startswith("n_texts_about_")]
    assert about and frame[about].to_numpy().sum() > 0, "the aspect features compared below are not all zero"
    from features.evidence import EvidenceFinder
    from models.survival import SurvivalModel

    survival = SurvivalModel.load(f"models:/churnsense-survival/{trained['versions']['survival']}")
    survival.check_fits(churn)
    scores, evidence = {}, {}
    finder = EvidenceFinder(churn.schema)
    for as_of, block in frame.groupby("as_of", sort=True):
        features = block.set_index("customer_id")[churn.columns]
        date = pd.Timestamp(as_of).date()
        # Time to churn from the same feature rows, beside the churn answer.
        scores[date] = churn.score(features, top_k=5).join(survival.summary(features))
        # The events behind each reason, from the whole history the training frame was built from.
        evidence[date] = finder.find(data.events, date, dict(scores[date]["reasons"].items()))
    assert len(scores) >= 3, "the simulator spec has several snapshot dates"
    times = pd.concat(scores.values())
    assert times["survival_90d"].std() > 0.005, "the survival answers compared below tell customers apart"
    assert times["expected_days_to_churn"].notna().any() and times["expected_days_more_than"].notna().any()
    with_text = [
        e for found in evidence.values() for rows in found.values() for item in rows if item
        for e in item["events"] if e.get("text")
    ]  # fmt: skip
    assert len(with_text) > 100, "the evidence compared below quotes texts"
    # Each quoted text with the phrase that drove its sentiment, by the sentiment model directly.
    from models.aspects import AspectCache, annotate_aspects, load_aspect_model
    from models.phrases import PhraseFinder, annotate

    classifier = scorer.classifier
    finder = PhraseFinder(classifier.labels)
    aspects = AspectCache(
        load_aspect_model(churn.aspect_lineage.model_uri)
    )  # the Bento's aspect model names what quoted texts are about
    for found in evidence.values():
        quoted = [item for rows in found.values() for item in rows]
        annotate(quoted, finder, classifier.predict_proba)
        annotate_aspects(quoted, aspects)
    assert sum("phrase" in e for e in with_text) > 50, "the evidence compared below quotes phrases"
    assert sum("aspect" in e for e in with_text) > 50, "... and aspects"
    return {
        "spec": trained["spec"],
        "scores": scores,
        "data": data,
        "evidence": evidence,
        "survival": trained["versions"]["survival"],
    }


def _reason_tuples(reasons, as_text: bool = False) -> list[tuple]:
    from batch.output import reason_value_text

    out = []
    for r in reasons:
        value = r["value"]
        if as_text and value is not None:
            value = reason_value_text(value)
        out.append((r["feature"], value, r["contribution"]))
    return out


def _assert_evidence_equals(got: list, truth: dict, as_of: dt.date, customer_id: str) -> None:
    """Each reason's evidence (events, texts, scores, phrases, totals) equals what the whole history gives."""
    want = truth["evidence"][as_of][customer_id]
    assert got == want, f"evidence of {customer_id} as of {as_of}"


def _assert_answer_equals(
    answer: dict, expected: pd.Series, churn, truth: dict | None = None, as_of: dt.date | None = None
) -> None:
    where = f"{answer['customer_id']} as of {answer['as_of']}"
    if truth is not None:
        _assert_evidence_equals(
            [r["evidence"] for r in answer["reasons"]], truth, as_of, answer["customer_id"]
        )
    assert answer["churn_risk"] == expected["churn_risk"], where
    assert answer["risk_band"] == expected["risk_band"], where
    assert _reason_tuples(answer["reasons"]) == _reason_tuples(expected["reasons"]), where
    assert answer["base_value"] == expected["base_value"], where
    assert answer["other_contribution"] == expected["other_contribution"], where
    assert answer["model_versions"]["churn"] == str(churn.version)
    assert answer["model_versions"]["sentiment_scoring_id"] == churn.sentiment_lineage.scoring_id
    assert answer["model_versions"]["aspects"] is not None  # the model behind evidence aspects is named
    # Time to churn: the survival model's answer from the same features, and which model gave it.
    assert answer["model_versions"]["survival"] == truth_survival_version(churn)
    for name in ANSWER_COLUMNS:
        want = expected[name]
        assert answer["time_to_churn"][name] == (None if pd.isna(want) else want), (where, name)


def truth_survival_version(churn) -> str:
    """The survival champion the session trained beside the churn model (the Bento's and the batch's default)."""
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias("churnsense-survival", "champion").version)


def _served_dates(truth: dict) -> list[dt.date]:
    dates = sorted(truth["scores"])
    return [dates[0], dates[-1]]


def _bodies(truth: dict, canonical, as_of: dt.date) -> list[dict]:
    customers, events, _ = canonical
    eligible = set(truth["scores"][as_of].index)
    ids = [c for c in pick_customers(events, as_of, 4 * N_SERVED) if c in eligible][:N_SERVED]
    assert len(ids) >= N_SERVED // 2, "customers with several texts before as_of"
    # Phrases asked for: every path must explain the quoted texts identically.
    return [request_for(customers, events, cid, as_of) | {"phrases": True} for cid in ids]


def test_service_alone_batched_and_under_load_equals_the_training_frame(
    http, server, truth, models, canonical
):
    churn, sentiment = models
    flood_texts = [
        "THE WORST SERVICE EVER!!! " * 15,  # long and loud, within the test server's 400 characters
        "thanks, that fixed it",
        "still broken and nobody answers my emails about the refund",
    ] + [f"the staff was {w} today" for w in ("great", "rude", "slow", "friendly")]
    for as_of in _served_dates(truth):
        expected = truth["scores"][as_of]
        bodies = _bodies(truth, canonical, as_of)
        alone = [http.post("/churn_risk", json=body) for body in bodies]
        for response, body in zip(alone, bodies, strict=True):
            assert response.status_code == 200, response.text
            _assert_answer_equals(
                response.json(), expected.loc[body["customer"]["customer_id"]], churn, truth, as_of
            )
        for start in range(0, len(bodies), 6):  # the test server takes at most 6 customers per batch
            chunk = bodies[start : start + 6]
            response = http.post("/churn_risk_batch", json={"customers": chunk})
            assert response.status_code == 200, response.text
            for answer, body in zip(response.json()["results"], chunk, strict=True):
                _assert_answer_equals(
                    answer, expected.loc[body["customer"]["customer_id"]], churn, truth, as_of
                )

        # Under load: two clients flood /sentiment while the same requests go again.
        stop = threading.Event()
        flooded: list[dict] = []
        failures: list[str] = []

        threads = [
            threading.Thread(
                target=_flood_sentiment,
                args=(server.url, flood_texts, seed, stop, flooded, failures),
                daemon=True,
            )
            for seed in (1, 2)
        ]
        for thread in threads:
            thread.start()
        try:
            for body in bodies:
                response = http.post("/churn_risk", json=body)
                assert response.status_code == 200, response.text
                _assert_answer_equals(response.json(), expected.loc[body["customer"]["customer_id"]], churn)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not failures, failures
        assert len(flooded) >= 3, "the flood ran alongside"
        # The flooding clients' own answers are each text's answer alone, whatever shared their forward pass.
        alone_proba = {t: sentiment.predict_proba([t])[0] for t in flood_texts}
        for reply in flooded:
            for text, result in zip(reply["texts"], reply["results"], strict=True):
                want = dict(zip(sentiment.labels, alone_proba[text].astype(float).tolist(), strict=True))
                assert result["scores"] == want


def _flood_sentiment(
    url: str, texts: list[str], seed: int, stop: threading.Event, flooded: list[dict], failures: list[str]
) -> None:
    """A client sending random subsets of `texts` to /sentiment until `stop`; answers go to `flooded`."""
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            sample = rng.sample(texts, k=rng.randint(1, len(texts)))
            reply = client.post("/sentiment", json={"texts": sample})
            if reply.status_code != 200:
                failures.append(reply.text)
                return
            flooded.append({"texts": sample, "results": reply.json()["results"]})


def _batch_rows(path: Path) -> pd.DataFrame:
    from batch import read_scores

    return read_scores(path).set_index("customer_id")


def _assert_batch_equals(
    got: pd.DataFrame, expected: pd.DataFrame, churn, truth: dict | None = None, as_of: dt.date | None = None
) -> None:
    import json

    assert sorted(got.index) == sorted(expected.index)  # the same eligible customers
    for customer_id, row in got.iterrows():
        want = expected.loc[customer_id]
        if truth is not None:
            evidence = [None if r["evidence"] is None else json.loads(r["evidence"]) for r in row["reasons"]]
            _assert_evidence_equals(evidence, truth, as_of, customer_id)
        assert row["churn_risk"] == want["churn_risk"], customer_id
        assert row["risk_band"] == want["risk_band"], customer_id
        assert _reason_tuples(row["reasons"]) == _reason_tuples(want["reasons"], as_text=True), customer_id
        assert row["base_value"] == want["base_value"], customer_id
        assert row["other_contribution"] == want["other_contribution"], customer_id
    assert (got["model_version"] == str(churn.version)).all()
    assert (got["sentiment_scoring_id"] == churn.sentiment_lineage.scoring_id).all()
    # The aspect model behind the aspect features (and the evidence's aspects), pinned, on every row.
    assert (got["aspect_model"] == churn.aspect_lineage.model_uri).all()
    # Time to churn, bit for bit (missing where the training frame's answer is missing), and its model.
    want = expected.loc[got.index, list(ANSWER_COLUMNS)]
    pd.testing.assert_frame_equal(got[list(ANSWER_COLUMNS)], want, check_exact=True, check_names=False)
    assert (got["survival_model"] == truth_survival_version(churn)).all()


@pytest.mark.parametrize("engine", ["local", pytest.param("spark", marks=pytest.mark.spark)])
def test_batch_engines_equal_the_training_frame(engine, truth, models, tmp_path: Path, request):
    from batch import score_customers

    churn, _ = models
    if engine == "spark":
        request.getfixturevalue("spark")
    for as_of in _served_dates(truth):
        out = tmp_path / f"{engine}-{as_of}" / ("scores" if engine == "spark" else "scores.parquet")
        summary = score_customers(
            truth["spec"],
            as_of,
            out,
            engine=engine,
            model_uri=f"models:/churnsense-churn/{churn.version}",
            cache_dir=tmp_path / f"cache-{engine}",  # fresh: this engine scores every text itself
            chunk_customers=150,
            master="local[2]",
            evidence=True,
            aspect_model=churn.aspect_lineage.model_uri,  # its own (another is refused)
            phrases=True,
            survival_model=f"models:/churnsense-survival/{truth['survival']}",
        )
        assert summary.n_buckets > 2
        _assert_batch_equals(_batch_rows(out), truth["scores"][as_of], churn, truth, as_of)


def _by_id(truth: dict, canonical, as_of: dt.date) -> list[dict]:
    return [
        {"customer_id": body["customer"]["customer_id"], "as_of": body["as_of"], "phrases": True}
        for body in _bodies(truth, canonical, as_of)
    ]


def test_by_id_from_the_event_store_equals_the_training_frame(
    http, postgres_backed_server, truth, models, canonical
):
    """`{"customer_id", "as_of"}` alone: the profile and the lookback window come from the event store (SQLite on
    the session server, PostgreSQL on a second one), and the answer is the training frame's, bit for bit."""
    import httpx

    churn, _ = models
    with httpx.Client(base_url=postgres_backed_server.url, timeout=60) as postgres_http:
        for client in (http, postgres_http):
            for as_of in _served_dates(truth):
                expected = truth["scores"][as_of]
                bodies = _by_id(truth, canonical, as_of)
                for body in bodies:
                    response = client.post("/churn_risk", json=body)
                    assert response.status_code == 200, response.text
                    _assert_answer_equals(
                        response.json(), expected.loc[body["customer_id"]], churn, truth, as_of
                    )
                response = client.post("/churn_risk_batch", json={"customers": bodies[:6]})
                assert response.status_code == 200, response.text
                for answer, body in zip(response.json()["results"], bodies[:6], strict=True):
                    _assert_answer_equals(answer, expected.loc[body["customer_id"]], churn)


def test_batch_from_the_postgres_store_equals_the_training_frame(
    postgres_event_store, truth, models, tmp_path: Path
):
    from batch import score_store

    churn, _ = models
    as_of = _served_dates(truth)[-1]
    out = tmp_path / "scores.parquet"
    score_store(
        postgres_event_store,
        as_of,
        out,
        model_uri=f"models:/churnsense-churn/{churn.version}",
        cache_dir=tmp_path / "cache",
        chunk_customers=150,
    )  # no --survival-model: the champion, as the Bento carries
    _assert_batch_equals(_batch_rows(out), truth["scores"][as_of], churn)


def test_the_batch_refuses_a_survival_model_that_does_not_fit_the_churn_model(models, truth):
    """A named survival model whose features are not the churn model's is refused; the champion that does not
    fit is left out with a warning (the Bento's choice too), and "none" leaves the columns empty."""
    import copy
    import dataclasses

    from batch.plan import BatchError, survival_source

    churn, _ = models
    named = f"models:/churnsense-survival/{truth['survival']}"
    assert survival_source(churn, named) == (named, truth["survival"])
    assert survival_source(churn, None) == (named, truth["survival"])
    assert survival_source(churn, "none") == (None, None)
    other = copy.copy(churn)
    other.schema = dataclasses.replace(churn.schema, windows=(7, 30, 120))
    with pytest.raises(BatchError, match="event and text features are not the churn model's"):
        survival_source(other, named)
    assert survival_source(other, None) == (None, None)


def test_batch_refuses_another_aspect_model_than_the_churn_models_own(models, trained, tmp_path: Path):
    """The churn model's aspect features (and the aspects of its evidence) come from its own aspect model:
    another one is refused before anything is scored."""
    from batch import score_customers
    from batch.plan import BatchError
    from models.aspects import ZeroShotAspects

    churn, _ = models
    encoder = trained["spec"].parent.parent / "service_sentiment" / "tiny_bert"
    other = ZeroShotAspects.from_encoder(encoder, ["billing"], ["my bill was wrong"], threshold=0.0)
    folder = other.save(tmp_path / "other_aspects", encoder)
    common = dict(
        model_uri=f"models:/churnsense-churn/{churn.version}", cache_dir=tmp_path / "cache", evidence=True
    )
    with pytest.raises(BatchError, match="is not the aspect model churn model"):
        score_customers(
            trained["spec"], "2024-11-01", tmp_path / "out.parquet", aspect_model=str(folder), **common
        )
    assert not (tmp_path / "out.parquet").exists()
