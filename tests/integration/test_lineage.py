"""Which models made a score: content-addressed caches, coupled churn and sentiment models, eligible customers.

Every test here runs in MLflow stores of its own (a registered "v1" exists in each of them), so moving aliases
never disturbs the session store that the service tests serve from.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.sentiment_helpers import review_texts, train_tiny_sentiment

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def own_store(folder: Path) -> Iterator[str]:
    """Point MLflow (environment and client) at a new SQLite store under `folder` for the block."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "CHURNSENSE_ARTIFACT_ROOT")}
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["CHURNSENSE_ARTIFACT_ROOT"] = str(folder / "artifacts")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))


def _tiny_sentiment(folder: Path, seed: int):
    return train_tiny_sentiment(
        folder, seed=seed
    )  # a random backbone per seed: two genuinely different models


def test_a_cache_is_never_shared_by_same_name_and_version_in_two_stores(tmp_path: Path):
    from models.sentiment import SentimentClassifier
    from models.text_scoring import CachedTextScorer, sentiment_lineage

    cache = tmp_path / "shared_cache"
    texts = review_texts(8, seed=3)["text"].tolist()
    scores, ids = [], []
    for seed, store in ((1, "store_a"), (2, "store_b")):
        with own_store(tmp_path / store):
            run = _tiny_sentiment(tmp_path / store / "model", seed)
            assert run.version == "1"  # the same name and version in both stores
            lineage = sentiment_lineage("models:/churnsense-sentiment/1")
            got = CachedTextScorer(lineage, cache)(texts)
            direct = SentimentClassifier.load("models:/churnsense-sentiment/1").sentiment_scores(texts)
            np.testing.assert_array_equal(got, direct)  # this store's model, not the other's cached scores
            scores.append(got)
            ids.append(lineage.scoring_id)
    assert ids[0] != ids[1] and not np.array_equal(scores[0], scores[1])
    assert sorted(p.name for p in (cache / "sentiment").iterdir()) == sorted(ids)


@pytest.fixture(scope="module")
def coupled_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A store with sentiment v1 and a churn model trained on its text features, both champions."""
    from features.simulate import write_demo_data
    from models.text_scoring import CachedTextScorer, sentiment_lineage
    from training.churn import train_churn
    from training.churn_config import ChurnConfig
    from training.churn_promotion import promote_churn
    from training.sentiment import promote_sentiment

    root = tmp_path_factory.mktemp("coupled")
    write_demo_data(root / "data", n_customers=500, seed=9)
    with own_store(root / "store"):
        _tiny_sentiment(root / "s1", seed=1)
        promote_sentiment()
        lineage = sentiment_lineage("models:/churnsense-sentiment@champion")
        train_churn(
            root / "data" / "spec.yaml",
            ChurnConfig(search={"max_trials": 3}),
            sentiment_scorer=CachedTextScorer(lineage, root / "cache"),
        )
        promote_churn()
        yield {
            "root": root,
            "spec": root / "data" / "spec.yaml",
            "cache": root / "cache",
            "as_of": "2024-11-01",
        }


def _score(store: dict, out: Path, **options):
    from batch import read_scores, score_customers

    summary = score_customers(store["spec"], store["as_of"], out, cache_dir=store["cache"], **options)
    return summary, read_scores(out)


def test_promoting_a_sentiment_model_never_changes_a_churn_score_silently(
    coupled_store: dict, tmp_path: Path
):
    from mlflow import MlflowClient

    from batch import BatchError
    from churnsense.errors import UserError
    from models.catalog import CHURN_MODEL
    from serving.build import coupled_sentiment_version
    from training.coupled import promote_sentiment_coupled
    from training.registry import champion_version

    with own_store(coupled_store["root"] / "store"):
        _, before = _score(coupled_store, tmp_path / "before.parquet")
        assert (before["sentiment_model_version"] == "1").all() and (before["model_version"] == "1").all()

        _tiny_sentiment(coupled_store["root"] / "s2", seed=2)  # sentiment v2
        alone = promote_sentiment_coupled(with_churn=False, force=True)
        assert not alone.promoted and alone.moved == []
        assert set(alone.impact) == {"own text features", "new text features"}
        assert alone.impact["own text features"] != alone.impact["new text features"]
        assert "--with-churn" in alone.render()
        assert str(champion_version("churnsense-sentiment").version) == "1"
        _, unchanged = _score(coupled_store, tmp_path / "unchanged.parquet")
        pd.testing.assert_frame_equal(unchanged, before)

        # Asking the batch job for another sentiment model is refused, never used.
        with pytest.raises(BatchError, match="not the sentiment model"):
            _score(
                coupled_store, tmp_path / "other.parquet", sentiment_model="models:/churnsense-sentiment/2"
            )

        # A sentiment alias moved by hand: churn scores still use v1, and the Bento build refuses the pair.
        client = MlflowClient()
        client.set_registered_model_alias("churnsense-sentiment", "champion", "2")
        _, by_hand = _score(coupled_store, tmp_path / "by_hand.parquet")
        pd.testing.assert_frame_equal(by_hand, before)
        with pytest.raises(UserError, match="--with-churn"):
            coupled_sentiment_version(champion_version(CHURN_MODEL))
        client.set_registered_model_alias("churnsense-sentiment", "champion", "1")

        both = promote_sentiment_coupled(with_churn=True, force=True)
        assert both.moved == ["churnsense-sentiment", "churnsense-churn"], both.render()
        assert str(champion_version("churnsense-sentiment").version) == "2"
        churn = champion_version(CHURN_MODEL)
        assert str(churn.version) == "2"
        assert str(coupled_sentiment_version(churn).version) == "2"
        _, after = _score(coupled_store, tmp_path / "after.parquet")
        assert (after["sentiment_model_version"] == "2").all() and (after["model_version"] == "2").all()


def test_batch_excludes_or_flags_customers_who_are_not_customers_at_as_of(
    coupled_store: dict, tmp_path: Path
):
    from features.labels import ALREADY_CHURNED, NOT_YET_A_CUSTOMER

    with own_store(coupled_store["root"] / "store"):
        excluded, kept = _score(coupled_store, tmp_path / "excluded.parquet")
        flagged, all_rows = _score(coupled_store, tmp_path / "flagged.parquet", ineligible="flag")
    assert kept["eligible"].all() and kept["churn_risk"].notna().all()
    out = all_rows[~all_rows["eligible"]]
    assert len(out) > 0 and out["churn_risk"].isna().all() and out["risk_band"].isna().all()
    assert set(out["ineligible_reason"]) <= {ALREADY_CHURNED, NOT_YET_A_CUSTOMER}
    counted = out["ineligible_reason"].value_counts().to_dict()
    assert excluded.ineligible_by_reason == flagged.ineligible_by_reason == counted
    assert ALREADY_CHURNED in counted  # the simulator's churners before 2024-11-01
    assert f"{sum(counted.values()):,}" in excluded.render()
    # The eligible rows are the same in both modes, bit for bit.
    pd.testing.assert_frame_equal(
        all_rows[all_rows["eligible"]].reset_index(drop=True), kept.reset_index(drop=True)
    )
    # The customers table's churn and signup dates decide it, as they decide the training snapshots.
    customers = pd.read_csv(coupled_store["spec"].parent / "customers.csv")
    churned_before = set(customers.loc[pd.to_datetime(customers["churned_at"]) < "2024-11-01", "customer_id"])
    assert churned_before <= set(out["customer_id"])
