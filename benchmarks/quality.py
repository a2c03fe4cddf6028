"""Churn model quality: churnsense's default model against untuned anchors, 5-fold grouped CV, every data set.

    .venv/bin/python benchmarks/quality.py [--datasets telco,bank,ecommerce,ravenstack,ravenstack_events,demo]
                                           [--folds 5]

Each data set is the labelled frame churnsense trains on (its loaders, feature engine and labels): the shared
ones through `configs/<name>.spec.yaml` (skipped when ../shared/data is absent), the demo simulated here
(10,000 customers, four monthly snapshots, no text scorer). Its rows are split into folds grouped by customer
and stratified by label; in each fold, fitted on the same training rows and scored on the same held-out rows:

- churnsense: the default config (`ChurnConfig()`): budgeted search, calibration, refit
  (`training.churn_fit.choose_churn_model` + `fit_calibrated`), scored by `models.churn.ChurnModel`;
- `HistGradientBoostingClassifier()` and `lightgbm.LGBMClassifier()` with their defaults, categorical columns
  as pandas categories (both split them natively);
- logistic regression: the trainer's baseline (median impute + scale, one-hot categories).

Anchors get the same columns churnsense uses (all-missing numeric columns dropped for all). Printed per data
set: pooled out-of-fold ROC AUC and PR AUC (the mean of five CVs with other fold seeds under 2,000 customers),
the spread of the per-fold ROC AUC, mean fit seconds per fold, and churnsense's search seconds against its
budget. Target: churnsense >= the best anchor's ROC AUC on every one.

Whether a data set has a signal to judge by: the logistic anchor's ROC AUC against the same cross-validation on
shuffled labels (`--permutations`, default 100; skipped where the anchor is more than eight null standard
deviations above 0.5). Where the anchor is not above that null (p > 0.05), every model is within chance and the
best of three anchors beats a fourth model most of the time by luck alone; the row says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = {
    "telco": ("telco_churn", "telco.spec.yaml"),
    "bank": ("bank_churn", "bank.spec.yaml"),
    "ecommerce": ("ecommerce_churn", "ecommerce.spec.yaml"),
    "ravenstack": ("ravenstack_saas", "ravenstack.spec.yaml"),
    # The same accounts from all five tables (#19): monthly snapshots, churn dates from the churn events table.
    "ravenstack_events": ("ravenstack_saas", "ravenstack-events.spec.yaml"),
}
SHARED_DATA = ROOT.parent / "shared" / "data"


@dataclass
class Scores:
    """One model's out-of-fold predictions (one array per repetition of the CV) and fit times over the folds."""

    oofs: list = field(default_factory=list)
    fold_auc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def spec_of(name: str, work: Path) -> Path | None:
    if name == "demo":
        folder = work / "quality_demo"
        if not (folder / "spec.yaml").exists():
            from features.simulate import write_demo_data

            write_demo_data(folder, n_customers=10_000, seed=11)
        return folder / "spec.yaml"
    folder, spec = SHARED[name]
    if not (SHARED_DATA / folder).is_dir():
        print(f"{name}: skipped ({SHARED_DATA / folder} is absent)")
        return None
    return ROOT / "configs" / spec


def anchors(schema, config):  # noqa: ANN001, ANN201
    """name -> (unfitted model, whether it takes pandas categories)."""
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier

    from training.churn_fit import make_baseline

    return {
        "HistGradientBoosting()": (lambda: HistGradientBoostingClassifier(), True),
        "LGBMClassifier()": (lambda: LGBMClassifier(verbose=-1), True),
        "logistic regression": (
            lambda: make_baseline(schema, config),
            False,
        ),  # imputes all-missing columns itself
    }


def evaluate(
    name: str, spec_path: Path, folds: int, lifetime: bool = True, repeats: int = 0, permutations: int = 100
) -> dict[str, Scores]:
    """`repeats` CVs with different fold seeds (0: five under 2,000 customers, where one split's ROC AUC
    moves by several points, else one); the table shows their mean."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from features.columns import CHURNED, CUSTOMER_ID
    from features.spec import load_spec
    from models.churn import ChurnModel, prepare_features
    from training.churn_config import ChurnConfig
    from training.churn_data import label_training_data, load_training_data
    from training.churn_fit import MIN_OBSERVED, choose_churn_model, cv_folds, fit_calibrated

    config = ChurnConfig()
    data = load_training_data(load_spec(spec_path), None)
    frame, schema = label_training_data(data, config.min_positives)
    if not lifetime:  # the same rows without the lifetime features (what do they add?)
        schema = dataclasses.replace(schema, lifetime=False)
    frame = frame.reset_index(drop=True)
    y = frame[CHURNED].to_numpy(dtype=np.int64)
    X = prepare_features(frame, schema)
    categorical = list(schema.profile_categorical)
    as_categories = X.copy()
    for column in categorical:
        as_categories[column] = as_categories[column].astype("category")
    print(
        f"\n{name}: {len(frame):,} rows, {frame[CUSTOMER_ID].nunique():,} customers, "
        f"{len(schema.feature_names())} features, churn rate {y.mean():.3f}",
        flush=True,
    )
    repeats = repeats or (5 if frame[CUSTOMER_ID].nunique() < 2_000 else 1)
    models = anchors(schema, config)
    results: dict[str, Scores] = {model: Scores() for model in ("churnsense", *models)}
    search_seconds = []
    folds_of = [
        (r, number, rows)
        for r in range(repeats)
        for number, rows in enumerate(cv_folds(frame[CUSTOMER_ID].astype(str), y, folds, seed=2024 + r))
    ]
    for r, number, (train_rows, test_rows) in folds_of:
        if number == 0:
            for scores in results.values():
                scores.oofs.append(np.zeros(len(y)))
        train, test = frame.iloc[train_rows], frame.iloc[test_rows]
        started = time.perf_counter()
        choice = choose_churn_model(train, schema, config)
        model = ChurnModel(fit_calibrated(train, schema, choice, config), schema, config.risk_bands.cutoffs())
        results["churnsense"].seconds.append(time.perf_counter() - started)
        search_seconds.append(choice.search_seconds)
        results["churnsense"].oofs[-1][test_rows] = model.predict_proba(test)
        numeric_used = X.iloc[train_rows].notna().sum() >= MIN_OBSERVED
        columns = [c for c in X.columns if c in categorical or numeric_used[c]]
        for model_name, (make, takes_categories) in models.items():
            source = as_categories if takes_categories else X
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The trees get the columns churnsense's trees use; the baseline imputes empty ones itself.
                used = columns if takes_categories else list(X.columns)
                anchor = make().fit(source.iloc[train_rows][used], y[train_rows])
                proba = anchor.predict_proba(source.iloc[test_rows][used])
                results[model_name].oofs[-1][test_rows] = proba[:, 1]
            results[model_name].seconds.append(time.perf_counter() - started)
        for scores in results.values():
            scores.fold_auc.append(float(roc_auc_score(y[test_rows], scores.oofs[-1][test_rows])))
        print(
            f"  {f'repeat {r + 1}/{repeats}, ' if repeats > 1 else ''}fold {number + 1}/{folds}: churnsense {results['churnsense'].fold_auc[-1]:.4f} "
            f"({len(choice.trials)} trials, {choice.search_seconds:.0f} s search), best anchor "
            f"{max(s.fold_auc[-1] for k, s in results.items() if k != 'churnsense'):.4f}",
            flush=True,
        )
    report(name, y, results, search_seconds, config.search.budget_s)
    signal(
        results, y, frame[CUSTOMER_ID].astype(str), X, models["logistic regression"][0], folds, permutations
    )
    return results


def signal(results, y, groups, X, make, folds: int, permutations: int) -> None:  # noqa: ANN001
    """Print whether the logistic anchor's pooled ROC AUC is above what the same CV gives on shuffled labels."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from training.churn_fit import cv_folds

    repeats = len(results["logistic regression"].oofs)
    observed = float(np.mean([roc_auc_score(y, oof) for oof in results["logistic regression"].oofs]))
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    null_sd = np.sqrt((positives + negatives + 1) / (12 * positives * negatives))  # Mann-Whitney under H0
    if permutations <= 0 or observed > 0.5 + 8 * null_sd:
        print(f"  signal: logistic anchor {observed:.4f}, {(observed - 0.5) / null_sd:.0f} null sd above 0.5")
        return
    rng = np.random.default_rng(0)
    null = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(permutations):
            shuffled = rng.permutation(y)
            aucs = []
            for r in range(repeats):
                oof = np.zeros(len(y))
                for train_rows, test_rows in cv_folds(groups, shuffled, folds, seed=2024 + r):
                    model = make().fit(X.iloc[train_rows], shuffled[train_rows])
                    oof[test_rows] = model.predict_proba(X.iloc[test_rows])[:, 1]
                aucs.append(roc_auc_score(shuffled, oof))
            null.append(float(np.mean(aucs)))
    null = np.asarray(null)
    p = (1 + int((null >= observed).sum())) / (1 + permutations)
    verdict = "a signal" if p <= 0.05 else "NO detectable signal: every model is within chance here"
    print(
        f"  signal: logistic anchor {observed:.4f} vs {permutations} label permutations (null mean "
        f"{null.mean():.4f}, 95th percentile {np.quantile(null, 0.95):.4f}): p = {p:.3f}, {verdict}"
    )


def report(name: str, y, results: dict[str, Scores], search_seconds: list[float], budget: float) -> None:  # noqa: ANN001
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    repeats = len(next(iter(results.values())).oofs)
    label = "ROC AUC" if repeats == 1 else f"mean of {repeats}"
    print(f"  {'model':<26}{label:>11}{'(folds sd)':>11}{'PR AUC':>9}{'fit s/fold':>12}")
    rows = {}
    for model, scores in results.items():
        auc = float(np.mean([roc_auc_score(y, oof) for oof in scores.oofs]))
        pr_auc = float(np.mean([average_precision_score(y, oof) for oof in scores.oofs]))
        rows[model] = auc
        print(
            f"  {model:<26}{auc:>11.4f}{np.std(scores.fold_auc):>11.4f}"
            f"{pr_auc:>9.4f}{np.mean(scores.seconds):>12.1f}"
        )
    best_anchor = max((auc, model) for model, auc in rows.items() if model != "churnsense")
    verdict = "met" if rows["churnsense"] >= best_anchor[0] else "MISSED"
    print(
        f"  target: churnsense {rows['churnsense']:.4f} >= best anchor {best_anchor[1]} {best_anchor[0]:.4f}: "
        f"{verdict}; search at most {max(search_seconds):.1f} s of its {budget:.0f} s budget"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="telco,bank,ecommerce,ravenstack,ravenstack_events,demo")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "bench_out")
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="CVs with different fold seeds (default: 5 under 2,000 customers, else 1)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=100,
        help="label permutations for the signal check of small-signal data sets (0: none)",
    )
    parser.add_argument(
        "--no-lifetime", action="store_true", help="leave out the lifetime features (to see what they add)"
    )
    args = parser.parse_args()
    from churnsense.environment import QUIET, set_defaults

    set_defaults(QUIET)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.folds}-fold grouped CV")
    for name in args.datasets.split(","):
        spec = spec_of(name, args.bench_dir)
        if spec is not None:
            evaluate(
                name,
                spec,
                args.folds,
                lifetime=not args.no_lifetime,
                repeats=args.repeats,
                permutations=args.permutations,
            )


if __name__ == "__main__":
    main()
