"""Churn training benchmark: the whole `train_churn` run on 100,000 simulated customers, step by step.

    .venv/bin/python benchmarks/train_churn.py [--customers 100000] [--data bench_out/churn_100k] [--config FILE]

Generates the data once with the simulator (cached under bench_out/), trains with the default config into a
throwaway MLflow store (bench_out/churn_mlflow_<time>/), then scores the validation rows with the registered
model. Prints per-step wall times, and ratios against in-run yardsticks:
  - fit / baseline: the held-out calibrated trees (the search's choice, CalibratedClassifierCV on grouped folds)
    against the logistic-regression baseline fitted on the same rows in the same run; the search itself
    (within its budget) and the final refit on every row are listed as their own steps;
  - scoring with reasons against scoring without them (same model, same rows).
The machine is shared: the load average before and after is printed so a slow run can be read in context.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ensure_data(folder: Path, customers: int, seed: int) -> Path:
    spec = folder / "spec.yaml"
    if not spec.exists():
        from features.simulate import write_demo_data

        print(f"generating {customers:,} customers into {folder} (once) ...", flush=True)
        started = time.perf_counter()
        write_demo_data(folder, n_customers=customers, seed=seed)
        print(f"  generated in {time.perf_counter() - started:.0f}s", flush=True)
    return spec


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench_out" / "churn_100k")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--config", type=Path, default=None, help="churn config YAML (default: built-in)")
    args = parser.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before sklearn loads OpenMP (shared 2-core machine)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    store = ROOT / "bench_out" / f"churn_mlflow_{time.strftime('%Y%m%d_%H%M%S')}"
    store.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["CHURNSENSE_ARTIFACT_ROOT"] = str(store / "artifacts")

    import numpy as np

    from models.churn import ChurnModel
    from training.churn import train_churn
    from training.churn_config import load_config
    from training.churn_promotion import load_validation_frame

    spec = ensure_data(args.data, args.customers, args.seed)
    config = load_config(args.config).model_copy(
        update={"registered_model_name": "bench-churn", "experiment_name": "bench-churn"}
    )
    load_before = os.getloadavg()[0]
    result = train_churn(spec, config, run_name="benchmark")
    load_after = os.getloadavg()[0]

    model = ChurnModel.load(result.model_uri)
    frame = load_validation_frame(result.run_id).set_index("customer_id")
    with_reasons = best_of(lambda: model.score(frame, top_k=5), 2)
    without = best_of(lambda: model.predict_proba(frame), 2)
    one = frame.iloc[[0]]
    model.score(one)
    single = []
    for _ in range(200):
        started = time.perf_counter()
        model.score(one)
        single.append(time.perf_counter() - started)

    t = result.timings
    print()
    print(f"churn training on {args.customers:,} simulated customers ({result.split})")
    print(
        f"  rows: {result.n_train:,} train / {result.n_valid:,} validation; calibration: {result.calibration}"
    )
    print(
        f"  load average (1 min) before / after training: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores"
    )
    print(f"  {'step':<22}{'seconds':>10}")
    for step, seconds in t.items():
        print(f"  {step:<22}{seconds:10.1f}")
    print(f"  {'ratio fit / baseline':<22}{t['fit_heldout'] / max(t['fit_baseline'], 1e-9):10.1f}x")
    print()
    n = len(frame)
    print(f"scoring {n:,} validation rows with the registered model (best of 2)")
    print(f"  with reasons (top 5):  {with_reasons:6.2f}s  {1e6 * with_reasons / n:7.1f} us/row")
    print(f"  probabilities only:    {without:6.2f}s  {1e6 * without / n:7.1f} us/row")
    print(f"  ratio reasons / plain: {with_reasons / without:6.1f}x")
    print(
        f"  one customer, score with reasons: median {1e3 * np.median(single):.2f} ms, "
        f"p90 {1e3 * np.percentile(single, 90):.2f} ms"
    )
    print()
    print("validation metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print("baseline metrics:   " + ", ".join(f"{k} {v:.4f}" for k, v in result.baseline_metrics.items()))


if __name__ == "__main__":
    main()
