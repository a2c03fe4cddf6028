"""The monitor's HTML report: one self-contained file (tables and embedded figures) a person can open anywhere.

Figures are `matplotlib.figure.Figure` objects (Agg canvas, no pyplot state), saved as PNG beside it for MLflow
and embedded in the page as base64.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnsense.files import atomic_write_text
from features.profile import ColumnProfile

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.alert { background: #f8d0d0; } .warn { background: #fbefc4; } .ok { } .note { color: #666; }
img { max-width: 46em; display: block; margin: 0.5em 0 1.5em; }
"""


def write_report(
    result: Any,
    reference: dict[str, ColumnProfile],
    current: dict[str, np.ndarray],
    out: Path,
    figures_dir: Path,
) -> list[Path]:
    """Write the report to `out` (atomically); returns the figure files (for MLflow)."""
    shown = [
        *result.scores["feature"],
        *result.events["feature"],
        *result.features["feature"].head(result.config.top),
    ]
    figures = []
    for name in shown:
        if name in reference and name in current:
            figures.append(_bars(reference[name], current[name], figures_dir / f"{_safe(name)}.png"))
    parts = [
        f"<h1>churnsense monitor, {result.as_of}</h1>",
        f"<p>{result.n_rows:,} customers against the reference of churn model v{html.escape(result.model_version)}"
        f" (its validation rows). PSI above {result.config.psi_warn} is worth a look, above "
        f"{result.config.psi_alert} an alert. <b>{len(result.alerts)} alert(s)</b>.</p>",
    ]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in result.notes]
    parts += ["<h2>Scores</h2>", _table(result.scores)]
    if result.realised is not None:
        r = result.realised
        parts += [
            f"<h2>Realised performance of the scores of {r['as_of']}</h2>",
            f"<p>{r['n']:,} customers, {r['churned']:,} churned within {r['horizon_days']} days: ROC AUC "
            f"{r['roc_auc']:.3f}, Brier score {r['brier']:.4f}, mean predicted risk {r['mean_risk']:.3f} against "
            f"an observed rate of {r['observed_rate']:.3f}.</p>",
            pd.DataFrame(r["bands"]).to_html(index=False, float_format=lambda v: f"{v:.3f}"),
        ]
    parts += ["<h2>Events and texts of the last 90 days</h2>", _table(result.events)]
    if result.unseen.get("now") is not None:
        u = result.unseen
        parts.append(
            f"<p class='{html.escape(u['status'])}'>Words the training texts never had: {u['then'] or 0:.1%} of the "
            f"reference window's words, {u['now']:.1%} now ({html.escape(u['status'])}).</p>"
        )
    parts += ["<h2>Features, most drifted first</h2>", _table(result.features)]
    parts += ["<h2>Distributions: reference against now</h2>"]
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(figure.stem)}' src='data:image/png;base64,{data}'>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>churnsense monitor {result.as_of}</title>"
    )
    page += f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    atomic_write_text(page, out)
    return figures


def _table(table: pd.DataFrame) -> str:
    rows = [
        "<table><tr><th>feature</th><th>PSI</th><th>status</th><th>missing then</th><th>missing now</th></tr>"
    ]
    for _, row in table.iterrows():
        psi = "" if np.isnan(row["psi"]) else f"{row['psi']:.3f}"
        rows.append(
            f"<tr class='{html.escape(str(row['status']))}'><td>{html.escape(str(row['feature']))}</td><td>{psi}</td>"
            f"<td>{html.escape(str(row['status']))}</td><td>{row['missing_then']:.1%}</td>"
            f"<td>{'' if np.isnan(row['missing_now']) else format(row['missing_now'], '.1%')}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _bars(profile: ColumnProfile, now: np.ndarray, path: Path) -> Path:
    from matplotlib.figure import Figure

    labels = profile.labels()
    keep = [i for i in range(len(labels)) if profile.shares[i] > 0 or now[i] > 0]
    x = np.arange(len(keep))
    figure = Figure(figsize=(8, 3.2))
    axes = figure.subplots()
    axes.bar(x - 0.2, [profile.shares[i] for i in keep], width=0.4, label="reference")
    axes.bar(x + 0.2, [now[i] for i in keep], width=0.4, label="now")
    axes.set_xticks(x, [labels[i] for i in keep], rotation=30, ha="right", fontsize=7)
    axes.set_ylabel("share of customers")
    axes.set_title(profile.name)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
