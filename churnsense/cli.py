"""The `churnsense` command line: a thin layer over the pipeline functions.

Every command prints a one-line `error: ...` and exits 2 on input a user can fix (`UserError`): a bad spec,
a missing column, a file that does not parse. Logging is configured here and nowhere else.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from churnsense.cli_models import SpecOption, passive_omp_threads, promote_app, train_app
from churnsense.environment import QUIET, set_defaults
from churnsense.errors import UserError

app = typer.Typer(
    help="churnsense: churn risk and customer sentiment. Train on your data, track in MLflow, "
    "serve with BentoML, batch-score locally or on Spark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# `train ...` and `promote ...`: churnsense/cli_models.py.
app.add_typer(train_app, name="train")
app.add_typer(promote_app, name="promote")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "filelock", "httpx", "matplotlib", "alembic", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- foundation --------------------------------------------------------------------------------------------


@app.command()
def validate(spec: SpecOption) -> None:
    """Check the files a spec points at; print every problem (file, column, what is wrong) at once."""
    from features.validate import validate_spec_file

    report = validate_spec_file(spec)
    typer.echo(report.render())
    if report.errors:
        raise typer.Exit(code=1)


@app.command("demo-data")
def demo_data(
    out: Annotated[
        Path, typer.Option("--out", help="folder to write customers, events, reviews and spec.yaml")
    ],
    customers: Annotated[int, typer.Option("--customers", min=10, help="number of customers")] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same data)")] = 7,
) -> None:
    """Generate a realistic, seeded customer base with interaction events, texts and labelled reviews."""
    from features.simulate import write_demo_data

    summary = write_demo_data(out, n_customers=customers, seed=seed)
    typer.echo(summary)


@app.command()
def features(
    spec: SpecOption,
    as_of: Annotated[str, typer.Option("--as-of", help="date the features describe (YYYY-MM-DD)")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write")],
) -> None:
    """Build the feature table (one row per customer) as of a date and write it as Parquet."""
    from features.pipeline import write_feature_table

    typer.echo(write_feature_table(spec, as_of, out))


# --- churn -------------------------------------------------------------------------------------------------

# --- batch scoring -----------------------------------------------------------------------------------------


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="event store SQLAlchemy URL, e.g. sqlite:///store.db or postgresql+psycopg://user@host/db "
        "(default: CHURNSENSE_STORE_URL, else sqlite:///churnsense_store.db)",
    ),
]


def _store_url(store: str | None) -> str:
    from churnsense.environment import paths
    from store import DEFAULT_URL

    return store or paths().store_url or DEFAULT_URL


@app.command()
def ingest(
    spec: SpecOption,
    store: StoreOption = None,
    rejects: Annotated[
        Path, typer.Option("--rejects", help="where rejected input rows go, with reasons (Parquet)")
    ] = Path("ingest.rejects.parquet"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
) -> None:
    """Load the spec's customers and events into the event store (created on first use).

    Idempotent: re-ingesting a file adds nothing (events keyed by `events.event_id` or by their content);
    new files append. Customers already stored take the newer profile and dates. One transaction: a failed
    ingest leaves the store as it was.
    """
    from store.ingest import ingest_spec

    summary = ingest_spec(spec, _store_url(store), rejects_path=rejects, progress=progress)
    typer.echo(summary.render())


@app.command()
def score(
    as_of: Annotated[str, typer.Option("--as-of", help="date the features describe (YYYY-MM-DD)")],
    out: Annotated[
        Path, typer.Option("--out", help="output: a Parquet file (local engine) or folder (spark engine)")
    ],
    spec: Annotated[
        Path | None, typer.Option("--spec", help="dataset spec YAML of the files to score (or --store)")
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (process pool) or spark")] = "local",
    model: Annotated[
        str | None,
        typer.Option("--model", help="churn model URI (default: models:/churnsense-churn@champion)"),
    ] = None,
    master: Annotated[str, typer.Option("--master", help="Spark master URL (--engine spark)")] = "local[*]",
    chunk_customers: Annotated[
        int,
        typer.Option("--chunk-customers", min=1, help="customers per bucket: bounds each worker's memory"),
    ] = 50_000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="processes of the local engine")] = 2,
    top_k: Annotated[int, typer.Option("--top-k", min=0, max=50, help="reasons per customer")] = 5,
    sentiment_model: Annotated[
        str | None,
        typer.Option(
            "--sentiment-model",
            help="where to load the churn model's own sentiment model from (default: where it was trained); "
            "a different model is refused",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="sentiment cache root (default ~/.cache/churnsense)")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    ineligible: Annotated[
        str,
        typer.Option(
            "--ineligible",
            help="customers not active at --as-of (signed up later, churned before): exclude (counted in the "
            "summary) or flag (kept with eligible=false and no risk)",
        ),
    ] = "exclude",
    evidence: Annotated[
        bool,
        typer.Option(
            "--evidence/--no-evidence",
            help="each reason also lists the events behind it (JSON in reasons.evidence); reads the event texts "
            "too, so it costs time and space",
        ),
    ] = False,
    aspect_model: Annotated[
        str | None,
        typer.Option(
            "--aspect-model",
            help="with --evidence: each quoted text also says what it is about, by this aspect model "
            "(e.g. models:/churnsense-aspects@champion, as a Bento that carries it answers)",
        ),
    ] = None,
    phrases: Annotated[
        bool,
        typer.Option(
            "--phrases/--no-phrases",
            help="with --evidence: each quoted text also carries the phrase that drove its sentiment "
            "(occlusion: about 20 extra sentiment passes per distinct text)",
        ),
    ] = False,
    survival_model: Annotated[
        str | None,
        typer.Option(
            "--survival-model",
            help="time to churn (expected_days_to_churn, survival_30d/60d/90d) by this survival model; default "
            "the churnsense-survival champion if it fits the churn model (as churnsense build chooses); none: "
            "leave those columns empty",
        ),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Score every customer as of a date (churn_risk, risk_band, reasons, time to churn); rejected input rows go
    beside --out.

    Reads the files of --spec, or everything in the event store of --store.
    """
    from batch import score_customers, score_store

    if (spec is None) == (store is None):
        raise UserError("give exactly one of --spec (files) or --store (the event store)")
    summary = (score_customers if spec is not None else score_store)(
        spec if spec is not None else _store_url(store),
        as_of,
        out,
        engine=engine,
        model_uri=model,
        master=master,
        chunk_customers=chunk_customers,
        workers=workers,
        top_k=top_k,
        sentiment_model=sentiment_model,
        cache_dir=cache_dir,
        progress=progress,
        ineligible=ineligible,
        evidence=evidence,
        aspect_model=aspect_model,
        phrases=phrases,
        survival_model=survival_model,
    )
    typer.echo(summary.render())


# --- sentiment ---------------------------------------------------------------------------------------------


@app.command("predict-sentiment")
def predict_sentiment_command(
    input: Annotated[Path, typer.Option("--input", help="CSV or Parquet file with a text column")],
    text_column: Annotated[str, typer.Option("--text-column", help="the column holding the texts")],
    out: Annotated[Path, typer.Option("--out", help="output file: .parquet or .csv")],
    model: Annotated[
        str, typer.Option("--model", help="model URI or local folder")
    ] = "models:/churnsense-sentiment@champion",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="texts per batch")] = 32,
    quantize: Annotated[
        bool | None, typer.Option("--int8/--fp32", help="override the model's logged int8 setting")
    ] = None,
    aspect_model: Annotated[
        str | None,
        typer.Option(
            "--aspect-model",
            help="also say what each text is about, with this aspect model (e.g. models:/churnsense-aspects@champion)",
        ),
    ] = None,
) -> None:
    """Score a text column in batches and write the rows with sentiment label, score and probabilities (and,
    with --aspect-model, each text's aspect and its score)."""
    passive_omp_threads()
    from models.sentiment import score_text_file

    typer.echo(
        score_text_file(
            input,
            text_column,
            out,
            model,
            batch_size=batch_size,
            quantize=quantize,
            aspect_model=aspect_model,
        )
    )


# --- serving -----------------------------------------------------------------------------------------------


@app.command()
def monitor(
    spec: SpecOption,
    as_of: Annotated[
        str, typer.Option("--as-of", help="the population to check: customers at this date (YYYY-MM-DD)")
    ],
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores",
            help="a batch output (churnsense score --out): its risks are checked for drift, and once its label "
            "window has passed in the spec's data, its realised ROC AUC, Brier score and churn per band",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="churn model URI (default: models:/churnsense-churn@champion)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML report (default: monitor-<as-of>.html here)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="thresholds YAML (defaults: configs/monitor.yaml)")
    ] = None,
) -> None:
    """Compare customers at --as-of with what the churn champion was trained on: drift per feature and of the
    scores (PSI), an HTML report logged to MLflow (experiment churnsense-monitor). Exit 0: nothing crossed the
    alert threshold; 1: something did (a nightly job can alert on it); 2: bad input."""
    from monitoring.monitor import load_monitor_config, run_monitor

    result = run_monitor(
        spec, as_of, scores=scores, model_uri=model, out=out, config=load_monitor_config(config)
    )
    typer.echo(result.render())
    if result.alerts:
        raise typer.Exit(code=1)


@app.command()
def build() -> None:
    """Import the MLflow champions (churn, sentiment) into the BentoML store and build the churnsense Bento."""
    from serving.build import build_bento, describe_bento

    typer.echo(describe_bento(build_bento()))


@app.command()
def serve(
    bento: Annotated[
        str | None, typer.Option("--bento", help="Bento tag (default: the newest churnsense Bento)")
    ] = None,
    from_source: Annotated[
        bool, typer.Option("--from-source", help="serve the working tree with the store's newest models")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="port to listen on")] = 3000,
) -> None:
    """Serve /churn_risk, /churn_risk_batch and /sentiment (OpenAPI docs at /, health at /readyz)."""
    from serving.server import SOURCE_TARGET, serve_foreground

    raise typer.Exit(code=serve_foreground(SOURCE_TARGET if from_source else bento, host, port))


def main() -> None:
    """Console-script entry point."""
    set_defaults(QUIET)  # before a command imports MLflow, BentoML or transformers
    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
