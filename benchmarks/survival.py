"""Time-to-churn quality: churnsense's survival model against a Cox model and Kaplan-Meier, same rows, same run.

    .venv/bin/python benchmarks/survival.py [--datasets demo,telco] [--customers 10000]

Data:
- demo: the simulator (`--customers`, four monthly snapshots), durations to the churn date or churn event,
  censored at the end of the data; test = the newest snapshot's rows of 20% of customers, train = the earlier
  snapshots of the other customers (the churn trainer's own out-of-time split, with its gap);
- telco: ../shared/data/telco_churn (skipped when absent) through `configs/telco.spec.yaml`, `tenure` (months) as
  the duration and `Churn` as the event, `tenure` and `TotalCharges` (about tenure x monthly charges) not read as
  features; test = 20% of customers, stratified by event.

Models, all fitted on the same training rows and judged on the same test rows:
- churnsense: `training.survival.choose_survival` with the default config: every candidate (ridge Cox, boosted
  Cox trees, random survival forest) fitted on the training rows of 80% of their customers, judged on the other
  20%, the best concordance refitted on all training rows;
- Cox proportional hazards (scikit-survival's `CoxPHSurvivalAnalysis`, tiny ridge for stability, same design).
  lifelines' `CoxPHFitter` is the same model (partial likelihood, Breslow), but lifelines 0.30 pins pandas < 3;
- Kaplan-Meier: one curve for everyone (integrated Brier score only; its concordance is 0.5 by definition).

Printed per data set: Harrell's concordance and the integrated Brier score (deciles 1-8 of the test churn times).
Target: churnsense's concordance above the Cox model's on both. For data with a label horizon (the demo), also
how the chosen curve's churn by the horizon, 1 - S(h), agrees with churnsense's churn model (fitted on the same
rows, a 30 s search): their means against the churn rate, the mean absolute gap, their rank correlation and
each one's ROC AUC for the horizon label.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TELCO = ROOT.parent / "shared" / "data" / "telco_churn"


def frames(name: str, customers: int, work: Path):  # noqa: ANN201
    """(spec, survival frame, survival schema, churn schema) of a data set, or None when its files are absent."""
    from features.spec import load_spec
    from features.survival import survival_columns, survival_frame
    from training.churn_config import ChurnConfig
    from training.churn_data import label_training_data, load_training_data
    from training.survival import survival_schema

    if name == "demo":
        from features.simulate import write_demo_data

        write_demo_data(work / "demo", n_customers=customers, seed=7)
        spec, exclude = load_spec(work / "demo" / "spec.yaml"), ()
    else:
        if not TELCO.exists():
            return None
        spec = load_spec(ROOT / "configs" / "telco.spec.yaml")
        spec = spec.model_copy(
            update={
                "customers": spec.customers.model_copy(
                    update={"duration": "tenure", "duration_unit": "months"}
                )
            }
        )
        exclude = ("TotalCharges",)
    data = load_training_data(spec)
    labelled, schema = label_training_data(data, ChurnConfig().min_positives)
    survival = survival_schema(schema, (*survival_columns(spec), *exclude))
    return spec, survival_frame(data, labelled), survival, schema


def split(spec, frame, seed: int = 42):  # noqa: ANN001, ANN201
    from training.churn_data import split_train_validation

    parts = split_train_validation(frame, spec.labels.horizon_days, 0.2, 1, seed)
    return parts.train.reset_index(drop=True), parts.valid.reset_index(drop=True), parts.description


def by_customer(frame, share: float = 0.2, seed: int = 43):  # noqa: ANN001, ANN201
    """The inner split the choice is made on: every row of a random `share` of customers held out."""
    import numpy as np

    ids = frame["customer_id"].astype(str)
    held = set(np.random.default_rng(seed).permutation(ids.unique())[: int(share * ids.nunique())])
    mask = ids.isin(held).to_numpy()
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def horizon_gap(spec, train, test, churn_schema, survival, config):  # noqa: ANN001, ANN201
    """The churn model (churnsense's trainer, fitted on the same rows) against the survival curve on the label
    the churn model predicts: churned within the horizon."""
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from features.columns import CHURNED
    from models.churn import ChurnModel
    from training.churn_fit import choose_churn_model, fit_calibrated

    churn_config = config.model_copy(update={"search": config.search.model_copy(update={"budget_s": 30})})
    choice = choose_churn_model(train, churn_schema, churn_config)
    churn = ChurnModel(
        fit_calibrated(train, churn_schema, choice, churn_config), churn_schema, config.risk_bands.cutoffs()
    )
    horizon = spec.labels.horizon_days
    p = churn.predict_proba(test)
    q = 1.0 - survival.curves(test, [horizon])[:, 0]
    y = test[CHURNED].to_numpy()
    return (
        f"{horizon} d",
        f"{y.mean():.4f}",
        f"{p.mean():.4f}",
        f"{q.mean():.4f}",
        f"{np.abs(p - q).mean():.4f}",
        f"{spearmanr(p, q).statistic:.3f}",
        f"{roc_auc_score(y, p):.4f} / {roc_auc_score(y, q):.4f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="demo,telco")
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()

    from churnsense.environment import QUIET, SCORING, set_defaults

    set_defaults(QUIET, SCORING)
    from sksurv.metrics import concordance_index_censored, integrated_brier_score

    from features.survival import censor_at
    from training.churn_config import ChurnConfig
    from training.survival import choose_survival, evaluation_days, fit_survival, kaplan_meier_brier, outcome

    config = ChurnConfig()
    rows, gaps = [], []
    with tempfile.TemporaryDirectory(prefix="bench-survival-") as tmp:
        for name in args.datasets.split(","):
            loaded = frames(name, args.customers, Path(tmp))
            if loaded is None:
                print(f"{name}: skipped (../shared/data absent)")
                continue
            spec, frame, schema, churn_schema = loaded
            train, test, description = split(spec, frame)
            train = censor_at(train, test["as_of"].min())  # no training outcome inside the test period
            inner_train, inner_valid = by_customer(train)
            print(
                f"{name}: {description}; inner split for the choice: {len(inner_train):,} / {len(inner_valid):,}"
            )
            started = time.perf_counter()
            chosen, candidates, _ = choose_survival(inner_train, inner_valid, schema, config)
            ours = fit_survival(train, schema, chosen, config)
            seconds = time.perf_counter() - started
            cox = fit_survival(train, schema, "cox", config)
            train_y, test_y = outcome(train), outcome(test)
            days = evaluation_days(train_y, test_y)
            inner = ", ".join(f"{k} {v['concordance']:.4f}" for k, v in candidates.items())
            for label, model in ((f"churnsense ({chosen}; inner: {inner})", ours), ("Cox PH", cox)):
                concordance = concordance_index_censored(test_y["event"], test_y["time"], model.risk(test))[0]
                brier = integrated_brier_score(train_y, test_y, model.curves(test, days), days)
                rows.append((name, label, f"{concordance:.4f}", f"{brier:.4f}"))
            rows.append((name, "Kaplan-Meier", "0.5", f"{kaplan_meier_brier(train_y, test, days):.4f}"))
            if spec.labels.as_of_dates():
                gaps.append((name, *horizon_gap(spec, train, test, churn_schema, ours, config)))
            print(f"  ({len(train):,} train / {len(test):,} test rows, {int(test_y['event'].sum()):,} test churns; "
                  f"churnsense chose and fitted in {seconds:.0f}s)")  # fmt: skip
    print("\n| data set | model | concordance | integrated Brier |\n|---|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if gaps:
        print(
            "\nchurn by the label horizon, test rows: the churn model's probability p and the curve's 1 - S(h)\n"
            "| data set | horizon | churned | mean p | mean 1 - S(h) | mean abs gap | rank correlation | "
            "ROC AUC p / 1 - S(h) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        for gap in gaps:
            print("| " + " | ".join(str(g) for g in gap) + " |")


if __name__ == "__main__":
    main()
