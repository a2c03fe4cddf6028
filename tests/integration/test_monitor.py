"""`churnsense monitor` on the session's churn champion (text features from a tiny sentiment model, aspects):
the reference snapshot's whole population moves by noise only; a shifted price and a shifted text mix are flagged on exactly the
features they feed; realised performance of an earlier scoring equals the training frame's labels scored
directly; the report is written and logged to MLflow; the CLI exits 1 on an alert."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli import run_cli

pytestmark = pytest.mark.slow

TEXT_MARKERS = ("sentiment", "_about_")  # features made from texts (features.text_features)


def _is_text_feature(name: str) -> bool:
    return any(marker in name for marker in TEXT_MARKERS)


@pytest.fixture(scope="module")
def champion(trained):
    from models.churn import ChurnModel

    model = ChurnModel.load(f"models:/churnsense-churn/{trained['versions']['churn']}")
    assert model.schema.use_sentiment and model.schema.aspects, "text features and aspects are monitored too"
    return model


def _monitor(spec: Path, as_of: str, champion, tmp_path: Path, **options):
    from monitoring.monitor import run_monitor

    return run_monitor(
        spec,
        as_of,
        model_uri=f"models:/churnsense-churn/{champion.version}",
        out=tmp_path / "report.html",
        cache_dir=tmp_path / "cache",
        **options,
    )


def test_the_reference_population_raises_nothing_and_the_report_is_logged(trained, champion, tmp_path: Path):
    import mlflow

    # The whole population of the reference's snapshot date (the reference is its validation customers, a
    # subset), rebuilt by the monitor from the files: nothing moves beyond sampling noise. (How often noise alone
    # raises an alarm is measured in tests/unit/test_profile.py; another simulator seed is another world: its
    # outages fall on other weeks, and the monitor rightly flags ticket recencies there.)
    result = _monitor(trained["spec"], "2024-11-01", champion, tmp_path)
    assert result.n_rows > 500
    assert result.alerts == [], result.render()
    assert result.features["psi"].max() < 0.1 and result.scores["psi"].max() < 0.1, result.render()
    # The last 90 days' events are the very events the reference read: the same mix, lengths and words.
    assert set(result.events["feature"]) == {"event_type", "text_length"}
    assert result.events["psi"].max() < 1e-12, result.render()
    assert (
        result.unseen["now"] == pytest.approx(result.unseen["then"], abs=1e-12) and result.unseen["now"] > 0
    )
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "churnsense monitor, 2024-11-01" in page
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["n_alerts"] == 0 and "psi.churn_risk" in run.data.metrics
    assert run.data.tags["churn_model_version"] == str(champion.version)


def test_a_shifted_price_and_text_mix_are_flagged_on_exactly_those_features(
    trained, champion, tmp_path: Path
):
    from typer.testing import CliRunner

    from churnsense.cli import app
    from features.shift import write_shifted_copy

    # A price change, and a new support channel: every text is now the same complaint about a failing app.
    shifted = write_shifted_copy(
        Path(trained["spec"]).parent, tmp_path / "shifted", price_factor=2.5, text_share=1.0
    )
    assert (
        pd.read_csv(shifted.parent / "customers.csv")["monthly_price"].mean()
        > 2 * pd.read_csv(Path(trained["spec"]).parent / "customers.csv")["monthly_price"].mean()
    )
    result = _monitor(shifted, "2024-11-01", champion, tmp_path)
    alerted = set(result.features.loc[result.features["status"] == "alert", "feature"])
    assert "monthly_price" in alerted, result.render()
    assert alerted - {"monthly_price"} and all(_is_text_feature(f) for f in alerted - {"monthly_price"}), (
        alerted
    )
    # The texts are longer and speak of things the training texts never did; the event-type mix did not move.
    events = result.events.set_index("feature")
    assert events.loc["text_length", "status"] == "alert" and events.loc["event_type", "psi"] < 0.1
    assert result.unseen["now"] > result.unseen["then"] + 0.1 and "unseen_words" in result.alerts
    untouched = result.features[~result.features["feature"].map(_is_text_feature)]
    assert (untouched.loc[untouched["feature"] != "monthly_price", "psi"] < 0.1).all(), untouched.head()
    # The command line says so and exits 1 (a nightly job alerts on it).
    outcome = CliRunner().invoke(
        app,
        ["monitor", "--spec", str(shifted), "--as-of", "2024-11-01",
         "--model", f"models:/churnsense-churn/{champion.version}", "--out", str(tmp_path / "cli.html")],
        env={"CHURNSENSE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert outcome.exit_code == 1, outcome.output
    assert "monthly_price" in outcome.output and "alert" in outcome.output


def test_realised_performance_of_an_earlier_scoring_matches_the_labels(trained, champion, tmp_path: Path):
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from batch import read_scores, score_customers
    from features.spec import load_spec
    from models.text_scoring import CachedTextScorer
    from training.churn_data import label_training_data, load_training_data

    scores_path = tmp_path / "scores.parquet"
    score_customers(
        trained["spec"], "2024-09-01", scores_path, model_uri=f"models:/churnsense-churn/{champion.version}",
        cache_dir=tmp_path / "cache", survival_model="none",
    )  # fmt: skip
    result = _monitor(trained["spec"], "2024-11-01", champion, tmp_path, scores=scores_path)
    realised = result.realised
    assert realised is not None, result.render()
    # Directly: the training frame's labels for that snapshot, joined to the scores.
    from models.aspect_scoring import CachedAspectLabeler

    spec = load_spec(trained["spec"])
    cache = tmp_path / "cache"
    data = load_training_data(
        spec,
        CachedTextScorer(champion.sentiment_lineage, cache),
        CachedAspectLabeler(champion.aspect_lineage, cache),
    )
    frame, _ = label_training_data(data, 1)
    labels = frame[pd.to_datetime(frame["as_of"]) == pd.Timestamp("2024-09-01")][["customer_id", "churned"]]
    joined = read_scores(scores_path).merge(labels.astype({"customer_id": str}), on="customer_id")
    y, p = joined["churned"].to_numpy(), joined["churn_risk"].to_numpy()
    assert realised["n"] == len(joined) and realised["churned"] == int(y.sum()) > 0
    assert realised["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert realised["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    by_band = joined.groupby("risk_band")["churned"].mean()
    for band in realised["bands"]:
        assert band["observed"] == pytest.approx(by_band[band["risk_band"]], abs=1e-12)
    assert np.isclose(sum(b["n"] for b in realised["bands"]), len(joined))


def test_bad_input_is_an_error_naming_it_with_exit_2_never_a_drift_alert(
    trained, champion, tmp_path: Path, capsys, monkeypatch
):
    """Exit 1 means drift: a date, a spec or a scores file that is wrong must say so and exit 2."""
    from batch import score_customers

    monkeypatch.setenv("CHURNSENSE_CACHE_DIR", str(tmp_path / "cache"))
    model = ["--model", f"models:/churnsense-churn/{champion.version}", "--out", str(tmp_path / "r.html")]
    spec = str(trained["spec"])
    code, _, err = run_cli(["monitor", "--spec", spec, "--as-of", "2024-13-01", *model], capsys, monkeypatch)
    assert code == 2 and "error: --as-of: '2024-13-01' is not a date" in err, err
    # A customers file without a column the churn model reads.
    lacking = tmp_path / "lacking"
    shutil.copytree(Path(spec).parent, lacking)
    pd.read_csv(lacking / "customers.csv").drop(columns=["region"]).to_csv(
        lacking / "customers.csv", index=False
    )
    code, _, err = run_cli(
        ["monitor", "--spec", str(lacking / "spec.yaml"), "--as-of", "2024-11-01", *model],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "customers: no column 'region'" in err, err
    # Scores files that are not what they claim: text risks, text dates, another model's scores.
    good = tmp_path / "scores.parquet"
    score_customers(spec, "2024-09-01", good, model_uri=f"models:/churnsense-churn/{champion.version}",
                    cache_dir=tmp_path / "cache", survival_model="none")  # fmt: skip
    table = pd.read_parquet(good)
    for name, broken, message in (
        (
            "risk",
            table.assign(churn_risk="high"),
            "churn_risk holds values that are not",
        ),
        ("date", table.assign(as_of="garbage"), "as_of holds values that are not dates"),
        ("model", table.assign(model_version="999"), "made by churn model v999"),
        ("empty", table.assign(eligible=False), "no scored customer in it"),
    ):
        path = tmp_path / f"{name}.parquet"
        broken.to_parquet(path)
        code, _, err = run_cli(
            ["monitor", "--spec", spec, "--as-of", "2024-11-01", "--scores", str(path), *model],
            capsys,
            monkeypatch,
        )
        assert code == 2 and message in err, (name, err)
    # One outcome only: no realised performance, and the note says why (not "the window has not passed").
    survivors = table[table["customer_id"].isin(_survivors(trained, champion, tmp_path))]
    survivors.to_parquet(tmp_path / "survivors.parquet")
    result = _monitor(
        trained["spec"], "2024-11-01", champion, tmp_path, scores=tmp_path / "survivors.parquet"
    )
    assert result.realised is None and any("same outcome" in note for note in result.notes), result.notes


def _survivors(trained, champion, tmp_path: Path) -> set[str]:
    """Customers who did not churn in the 60 days after 2024-09-01 (by the spec's own labels)."""
    from features.labels import label_snapshot
    from features.pipeline import load_data
    from features.spec import load_spec

    spec = load_spec(trained["spec"])
    data = load_data(spec, with_text=False)
    labels = label_snapshot(data.customers, data.events, "2024-09-01", 60, spec.events.churn_event)
    return set(labels.loc[labels["churned"] == 0, "customer_id"].astype(str))
