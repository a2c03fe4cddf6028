"""`churnsense train ...` and `churnsense promote ...`: one command per model (churn, sentiment, aspects,
survival), each a thin layer over its trainer. `churnsense.cli` mounts both groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from churnsense.environment import SCORING, set_defaults
from churnsense.errors import UserError

train_app = typer.Typer(help="Train a model, log it to MLflow and register it.", no_args_is_help=True)
promote_app = typer.Typer(
    help="Move the registry's `champion` alias to the newest version if it beats the champion.",
    no_args_is_help=True,
)
SpecOption = Annotated[Path, typer.Option("--spec", help="dataset spec YAML (see README: 'Dataset spec')")]


ChurnConfigOption = Annotated[
    Path | None, typer.Option("--config", help="churn config YAML (default: built-in, as configs/churn.yaml)")
]


SentimentModelOption = Annotated[
    str | None,
    typer.Option(
        "--sentiment-model",
        help="score event texts with this sentiment model (e.g. models:/churnsense-sentiment@champion) and add "
        "text-sentiment features; the churn model records it (service and batch use exactly that model); "
        "scores are cached per normalised text and model digest (CHURNSENSE_CACHE_DIR)",
    ),
]
AspectModelOption = Annotated[
    str | None,
    typer.Option(
        "--aspect-model",
        help="with --sentiment-model: say what each text is about with this aspect model (e.g. "
        "models:/churnsense-aspects@champion) and add, per aspect, the negative texts about it in the longest "
        "window; the churn model records it (the Bento carries exactly that model; batch uses it)",
    ),
]


def _text_models(sentiment_model: str | None, aspect_model: str | None) -> tuple:
    """The text scorer and aspect labeler the options name (None for those not given)."""
    scorer = labeler = None
    if sentiment_model:
        from models.text_scoring import CachedTextScorer, sentiment_lineage

        scorer = CachedTextScorer(sentiment_lineage(sentiment_model))
    if aspect_model:
        if not sentiment_model:
            raise UserError(
                "--aspect-model: aspect features count negative texts; give --sentiment-model too"
            )
        from models.aspect_scoring import CachedAspectLabeler

        labeler = CachedAspectLabeler.from_uri(aspect_model)
    return scorer, labeler


@train_app.command("churn")
def train_churn_command(
    spec: SpecOption,
    config: ChurnConfigOption = None,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="write a JSON summary (metrics, run id, version, timings)"),
    ] = None,
    sentiment_model: SentimentModelOption = None,
    aspect_model: AspectModelOption = None,
) -> None:
    """Train calibrated boosted trees (and a logistic baseline) on churn labels from the spec; log and register."""
    set_defaults(SCORING)  # before sklearn loads OpenMP: no spinning on 2 cores
    from training.churn import train_churn, write_summary

    scorer, labeler = _text_models(sentiment_model, aspect_model)
    result = train_churn(spec, config, sentiment_scorer=scorer, aspect_labeler=labeler)
    if summary is not None:
        write_summary(result, summary)
    typer.echo(result.render())


@promote_app.command("churn")
def promote_churn_command(
    config: ChurnConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="promote even if the challenger is not better")
    ] = False,
) -> None:
    """Compare the newest churn version with the champion on its validation data; exit 0 promoted, 1 refused."""
    set_defaults(SCORING)
    from training.churn_promotion import promote_churn

    decision = promote_churn(force=force, config=config)
    typer.echo(decision.render())
    raise typer.Exit(code=0 if decision.promoted else 1)


# --- sentiment ---------------------------------------------------------------------------------------------


def passive_omp_threads() -> None:
    """Before torch loads: idle OpenMP threads sleep instead of spinning. On a shared 2-core machine, spinning
    threads starve the thread they wait for; a MiniLM training step measured 6.7 s with spinning vs 0.9 s
    passive under load."""
    set_defaults(SCORING)


@train_app.command("sentiment")
def train_sentiment_command(
    spec: SpecOption,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML with the keys to change from configs/sentiment.yaml")
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="write a JSON summary (metrics, run id, version, timings)"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="continue a stopped run (killed, crashed) from its last checkpoint, in that MLflow run and with "
            "its config (checkpoint_every_steps: every 500 steps by default); give the same --spec",
        ),
    ] = None,
) -> None:
    """Fine-tune the sentiment transformer and a TF-IDF baseline on the spec's `reviews`; log and register.

    Runs on CUDA when torch sees a device (device/precision in the config), else the CPU; the exported model
    always scores on the CPU, identically."""
    passive_omp_threads()
    from training.sentiment import train_sentiment, write_summary

    result = train_sentiment(spec, config, resume=resume)
    if summary is not None:
        write_summary(result, summary)
    typer.echo(result.headline())


@train_app.command("aspects")
def train_aspects_command(
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="dataset spec whose `reviews` label what each text is about: evaluates the zero-shot model on it, "
            "or with --fine-tune trains on it",
        ),
    ] = None,
    taxonomy: Annotated[
        Path | None,
        typer.Option("--taxonomy", help="aspect names and descriptions (default configs/aspects.yaml)"),
    ] = None,
    fine_tune: Annotated[
        bool,
        typer.Option(
            "--fine-tune",
            help="fine-tune a classifier on the spec's labels (the sentiment trainer) instead of zero-shot; it is "
            "averaged with a class-balanced TF-IDF model at a weight chosen on validation",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="with --fine-tune: keys to change from configs/sentiment.yaml"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="with --fine-tune: continue a stopped aspect run from its last checkpoint, with its config",
        ),
    ] = None,
) -> None:
    """Build (zero-shot) or train (--fine-tune) the aspect model; log and register it as churnsense-aspects.

    Zero-shot embeds each aspect's description with the packaged sentence encoder and names the most similar
    aspect, or the taxonomy's none label below the threshold; with --spec it is scored on the labelled test
    split (its threshold chosen on validation). --fine-tune trains a classifier on the labels instead and
    averages its probabilities with a class-balanced TF-IDF model's, the weight chosen on validation macro-F1."""
    passive_omp_threads()
    from training.aspects import load_aspect_config, train_fine_tuned, train_zero_shot

    if fine_tune:
        if spec is None:
            raise UserError(
                "--fine-tune needs --spec: a dataset spec whose `reviews` label each text's aspect"
            )
        if taxonomy is not None:
            raise UserError(
                "--taxonomy is for the zero-shot model; a fine-tuned one learns the spec's labels"
            )
        typer.echo(train_fine_tuned(spec, config, resume=resume).headline())
        return
    if resume is not None:
        raise UserError("--resume is for --fine-tune; a zero-shot model trains in seconds")
    if config is not None:
        raise UserError("--config is for --fine-tune; the zero-shot model is configured by --taxonomy")
    from features.spec import load_spec

    result = train_zero_shot(load_aspect_config(taxonomy), load_spec(spec) if spec is not None else None)
    typer.echo(result.headline())


@promote_app.command("aspects")
def promote_aspects_command(
    force: Annotated[
        bool, typer.Option("--force", help="promote even if the challenger is not better")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="registered model name")] = "churnsense-aspects",
) -> None:
    """Make the newest aspect model the champion if it is the first, or beats the champion's macro-F1 on its own
    labelled test split (a zero-shot model built without --spec has none: only --force promotes it).
    The next `churnsense build` serves the champion's aspects in /sentiment. Exit 0 when the champion moved."""
    passive_omp_threads()
    from training.aspects import promote_aspects

    result = promote_aspects(force=force, model_name=name)
    typer.echo(result.render())
    raise typer.Exit(code=0 if result.promoted else 1)


@promote_app.command("sentiment")
def promote_sentiment_command(
    force: Annotated[
        bool, typer.Option("--force", help="promote even if the challenger is not better")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="registered model name")] = "churnsense-sentiment",
    with_churn: Annotated[
        bool,
        typer.Option(
            "--with-churn",
            help="when the churn champion's text features come from another sentiment model: retrain the churn "
            "model with the new one, gate it, and move both champion aliases together (or neither)",
        ),
    ] = False,
) -> None:
    """Compare the newest sentiment version with the champion on its validation split (macro-F1, log loss).

    If the churn champion computes its text features with another sentiment model, the alias does not move alone
    (churn risks would change, or the pair would not build): the churn champion's validation rows are rescored
    with the new model's text features and shown; --with-churn retrains and gates the churn model and moves both.
    Exit 0 when the sentiment champion moved, 1 otherwise."""
    passive_omp_threads()
    from training.coupled import promote_sentiment_coupled

    result = promote_sentiment_coupled(with_churn=with_churn, force=force, model_name=name)
    typer.echo(result.render())
    raise typer.Exit(code=0 if result.promoted else 1)


@train_app.command("survival")
def train_survival_command(
    spec: SpecOption,
    config: ChurnConfigOption = None,
    sentiment_model: SentimentModelOption = None,
    aspect_model: AspectModelOption = None,
) -> None:
    """Train time-to-churn models (Cox, boosted Cox trees, random survival forest) on the churn snapshots; keep
    the best validation concordance; log, plot and register it as churnsense-survival."""
    set_defaults(SCORING)
    from training.survival import train_survival

    scorer, labeler = _text_models(sentiment_model, aspect_model)
    typer.echo(train_survival(spec, config, sentiment_scorer=scorer, aspect_labeler=labeler).render())


@promote_app.command("survival")
def promote_survival_command(
    config: ChurnConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="promote even if the challenger is not better")
    ] = False,
) -> None:
    """Compare the newest survival version with the champion on its validation rows (concordance, then the
    integrated Brier score within a tolerance); exit 0 promoted, 1 refused."""
    set_defaults(SCORING)
    from training.survival_promotion import promote_survival

    decision = promote_survival(force=force, config=config)
    typer.echo(decision.render())
    raise typer.Exit(code=0 if decision.promoted else 1)
