"""Evaluation plots for binary classifiers, written as PNG files (MLflow logs the folder).

Figures are built with `matplotlib.figure.Figure` (Agg canvas), never through pyplot's global state, so plotting
is safe in a server or a test and selects no backend at import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

Scores = Mapping[str, np.ndarray]  # curve label -> predicted probabilities for the same labels


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def roc_plot(y: np.ndarray, scores: Scores, path: Path) -> Path:
    """ROC curves, one per model, with the chance diagonal."""
    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (validation)")
    ax.legend(loc="lower right")
    return _save(figure, path)


def precision_recall_plot(y: np.ndarray, scores: Scores, path: Path) -> Path:
    """Precision-recall curves with the churn rate as the no-skill line."""
    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=name)
    ax.axhline(float(np.mean(y)), linestyle="--", color="grey", linewidth=1, label="churn rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (validation)", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return _save(figure, path)


def calibration_plot(y: np.ndarray, scores: Scores, path: Path, bins: int = 10) -> Path:
    """Reliability diagram (quantile bins) with the predicted-probability histogram below."""
    figure = Figure(figsize=(5, 6))
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    reach = 0.0
    for name, p in scores.items():
        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
        top.plot(predicted, observed, marker="o", label=name)
        bottom.hist(p, bins=40, range=(0, 1), histtype="step", label=name)
        reach = max(reach, float(np.max(p)), float(np.max(observed)))
    # Zoom to where the predictions are (churn probabilities are often all below 0.2).
    reach = min(1.0, 1.1 * reach)
    top.set(ylabel="observed churn rate", title="Calibration (validation)", xlim=(0, reach), ylim=(0, reach))
    top.legend(loc="upper left")
    bottom.set(xlabel="predicted churn probability", ylabel="customers")
    return _save(figure, path)


def gains_plot(y: np.ndarray, scores: Scores, path: Path) -> Path:
    """Cumulative gains (share of churners caught vs share contacted, riskiest first) and lift per decile."""
    figure = Figure(figsize=(9, 4))
    gains_ax, lift_ax = figure.subplots(1, 2)
    y = np.asarray(y)
    total = max(1, int(y.sum()))
    width = 0.8 / max(1, len(scores))
    for offset, (name, p) in enumerate(scores.items()):
        order = np.argsort(-np.asarray(p), kind="stable")
        caught = np.cumsum(y[order]) / total
        share = np.arange(1, len(y) + 1) / len(y)
        gains_ax.plot(np.r_[0, share], np.r_[0, caught], label=name)
        deciles = np.array_split(y[order], 10)
        lift = [part.mean() / max(y.mean(), 1e-12) if len(part) else 0.0 for part in deciles]
        lift_ax.bar(
            np.arange(1, 11) + (offset - (len(scores) - 1) / 2) * width, lift, width=width, label=name
        )
    gains_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    gains_ax.set(
        xlabel="share of customers contacted (riskiest first)",
        ylabel="share of churners caught",
        title="Cumulative gains",
    )
    gains_ax.legend(loc="lower right")
    lift_ax.axhline(1.0, linestyle="--", color="grey", linewidth=1)
    lift_ax.set(
        xlabel="risk decile (1 = riskiest)", ylabel="lift", title="Lift per decile", xticks=range(1, 11)
    )
    return _save(figure, path)


def importance_plot(
    names: Sequence[str],
    importance: np.ndarray,
    path: Path,
    top: int = 20,
    xlabel: str = "mean |contribution| (log-odds)",
) -> Path:
    """Horizontal bars of the `top` largest importances."""
    order = np.argsort(-np.asarray(importance), kind="stable")[:top][::-1]
    figure = Figure(figsize=(6, max(2.5, 0.3 * len(order) + 1)))
    ax = figure.subplots()
    ax.barh([names[i] for i in order], np.asarray(importance)[order])
    ax.set(xlabel=xlabel, title="Feature importance (validation)")
    return _save(figure, path)


def survival_by_band(model, train, valid, path: Path) -> Path:  # noqa: ANN001
    """Predicted survival (mean curve) against the Kaplan-Meier curve of the same customers, for four groups of
    validation customers by the model's risk (quartiles): where the curves part, the model is off."""
    from sksurv.nonparametric import kaplan_meier_estimator

    from features.survival import DURATION, EVENT

    risk = model.risk(valid)
    edges = np.quantile(risk, [0.25, 0.5, 0.75])
    group = np.searchsorted(edges, risk, side="right")
    days = np.linspace(0, float(min(train[DURATION].max(), valid[DURATION].max())), 100)
    curves = model.curves(valid, days)
    figure = Figure(figsize=(7, 5))
    ax = figure.subplots()
    for g, name in enumerate(("lowest risk", "second", "third", "highest risk")):
        mine = group == g
        if mine.sum() < 2:
            continue
        (line,) = ax.plot(days, curves[mine].mean(axis=0), label=f"{name}: predicted")
        times, survival = kaplan_meier_estimator(
            valid[EVENT].to_numpy()[mine].astype(bool), valid[DURATION].to_numpy()[mine]
        )
        ax.step(
            times,
            survival,
            where="post",
            linestyle="--",
            color=line.get_color(),
            label=f"{name}: Kaplan-Meier",
        )
    ax.set(
        xlabel="days after as_of", ylabel="still a customer", title="survival by risk quartile (validation)"
    )
    ax.legend(fontsize=7)
    return _save(figure, path)
