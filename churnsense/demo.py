"""`make demo`: the whole loop on generated data, end to end.

    python -m churnsense.demo --out demo_out [--customers 3000]

generate data -> validate -> feature table -> train + promote sentiment (short MiniLM fine-tune) -> train +
promote churn (with the sentiment of event texts as features) -> train + promote time to churn (survival) ->
batch-score everyone -> load the event store ->
build the Bento, serve it briefly and send one /churn_risk (in full, then by id) and one /sentiment request ->
monitor this month against the champion's reference, then a deliberately shifted copy.
Everything goes under --out (data, MLflow store, BentoML home, sentiment cache), so the demo never touches
your own stores. Open the runs with `mlflow ui --backend-store-uri sqlite:///demo_out/mlflow.db`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from churnsense.environment import OFFLINE, QUIET, set_defaults
from churnsense.errors import UserError


def _banner(step: str) -> float:
    print(f"\n=== {step} " + "=" * max(0, 70 - len(step)), flush=True)
    return time.perf_counter()


def _isolate_stores(out: Path) -> None:
    """Keep the demo's MLflow runs/registry and BentoML models inside --out."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(out / 'mlflow.db').resolve()}")
    os.environ.setdefault("CHURNSENSE_ARTIFACT_ROOT", str((out / "mlruns").resolve()))
    os.environ.setdefault("BENTOML_HOME", str((out / "bentoml").resolve()))
    os.environ.setdefault("CHURNSENSE_CACHE_DIR", str((out / "cache").resolve()))
    set_defaults(QUIET, OFFLINE)


def run_demo(out: Path, customers: int, seed: int, sentiment_steps: int) -> None:
    from features.pipeline import write_feature_table
    from features.simulate import write_demo_data
    from features.validate import validate_spec_file

    _isolate_stores(out)
    data_dir = out / "data"
    spec_path = data_dir / "spec.yaml"

    started = _banner(f"1. generate {customers:,} customers with events, texts and reviews")
    print(write_demo_data(data_dir, n_customers=customers, seed=seed))
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner("2. validate the dataset spec")
    report = validate_spec_file(spec_path)
    print(report.render())
    if report.errors:
        raise UserError(f"{spec_path}: the generated data failed validation")

    started = _banner("3. build the feature table as of the newest snapshot date")
    from features.spec import load_spec

    as_of = load_spec(spec_path).labels.as_of_dates()[-1]
    print(write_feature_table(spec_path, as_of.isoformat(), out / "features.parquet"))
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner(
        f"4. fine-tune the sentiment model on the reviews ({sentiment_steps} steps), build the zero-shot aspect "
        "model; promote both"
    )
    from training.sentiment import promote_sentiment, train_sentiment

    # A short budget: a higher learning rate for the new classifier head makes 60 steps worth running.
    sentiment_run = train_sentiment(
        spec_path, max_steps=sentiment_steps, epochs=1, learning_rate=1e-4, head_learning_rate=1e-3
    )
    print(sentiment_run.headline())
    print(
        "  (a demo budget: on these synthetic reviews 180 steps reach the TF-IDF baseline, about 0.76 accuracy;"
        " README 'Measured quality' has real-data figures)"
    )
    print(promote_sentiment().render())
    from training.aspects import load_aspect_config, promote_aspects, train_zero_shot

    # Zero-shot: the simulated texts carry no reason labels. The Bento then names what quoted texts are about.
    print(train_zero_shot(load_aspect_config()).headline())
    print(promote_aspects().render())
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner(
        "5. train the churn model (event texts scored by the sentiment champion, labelled by the aspect "
        "champion) and promote it"
    )
    from models.aspect_scoring import CachedAspectLabeler
    from models.catalog import ASPECT_MODEL, SENTIMENT_MODEL, champion_uri
    from models.text_scoring import CachedTextScorer, sentiment_lineage
    from training.churn import train_churn
    from training.churn_promotion import promote_churn

    # The churn model records both text models: the batch job and the Bento use exactly them for its features
    # (sentiment aggregates; texts and negative texts per aspect).
    cached_scores = CachedTextScorer(sentiment_lineage(champion_uri(SENTIMENT_MODEL)))
    aspects = CachedAspectLabeler.from_uri(champion_uri(ASPECT_MODEL))
    churn_run = train_churn(spec_path, sentiment_scorer=cached_scores, aspect_labeler=aspects)
    print(churn_run.render())
    print(promote_churn().render())
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner(
        "5b. train the time-to-churn (survival) model on the same snapshots and features; promote it"
    )
    from training.survival import train_survival
    from training.survival_promotion import promote_survival

    # Every churn answer (batch and Bento) then says when, too: expected days to churn, survival at 30/60/90 days.
    print(train_survival(spec_path, sentiment_scorer=cached_scores, aspect_labeler=aspects).render())
    print(promote_survival().render())
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner(f"6. batch-score every customer as of {as_of} (local engine)")
    from batch import score_customers, top_risk

    scores_path = out / "scores.parquet"
    summary = score_customers(spec_path, as_of, scores_path, progress=True)
    print(summary.render())
    print("\nten riskiest customers:")
    with _wide_pandas():
        print(top_risk(scores_path, 10).to_string(index=False))
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner("7. load the event store, so support tools can ask by customer id")
    from store.ingest import ingest_spec

    store_url = f"sqlite:///{(out / 'store.db').resolve()}"
    print(
        ingest_spec(spec_path, store_url, rejects_path=out / "ingest.rejects.parquet", progress=True).render()
    )
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner("8. build the Bento, serve it on 127.0.0.1 and ask it about one customer")
    from serving.build import build_bento
    from serving.smoke import demo_requests

    tag = build_bento()
    print(f"built {tag}")
    riskiest = [str(c) for c in top_risk(scores_path, 20)["customer_id"]]
    demo_requests(tag, spec_path, store_url=store_url, riskiest=riskiest)
    print(f"({time.perf_counter() - started:.1f}s)")

    started = _banner(
        "9. monitor: this month against the champion's reference, then a deliberately shifted copy"
    )
    from features.shift import write_shifted_copy
    from monitoring.monitor import run_monitor

    # This month, with realised performance: the batch scores' 60-day label window has passed in the data.
    print(run_monitor(spec_path, as_of, scores=scores_path, out=out / "monitor.html").render())
    shifted = write_shifted_copy(data_dir, out / "shifted", price_factor=1.4, text_share=0.5)
    print(f"\nthe same customers with prices up 40% and half their texts a new complaint ({shifted.parent}):")
    print(run_monitor(shifted, as_of, out=out / "monitor-shifted.html").render())
    print(f"({time.perf_counter() - started:.1f}s)")
    print(
        f"\ndone: everything is under {out}/ (MLflow: mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db)"
    )


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_colwidth", 120)


app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False)


@app.command(help=__doc__)
def main(
    out: Annotated[Path, typer.Option("--out", help="folder for everything the demo writes")] = Path(
        "demo_out"
    ),
    customers: Annotated[
        int, typer.Option("--customers", min=100, help="size of the generated base")
    ] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="simulator seed")] = 7,
    sentiment_steps: Annotated[
        int, typer.Option("--sentiment-steps", min=1, help="fine-tuning steps for the demo's MiniLM")
    ] = 60,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_demo(out, customers, seed, sentiment_steps)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(code=2) from None


if __name__ == "__main__":
    app()
