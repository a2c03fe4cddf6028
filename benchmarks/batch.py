"""Batch-scoring benchmark: 1,000,000 customers / ~22,000,000 events, local engine and Spark on local[2].

    .venv/bin/python benchmarks/batch.py [--customers 1000000] [--engines local,spark] [--chunk-customers 50000]

Prepared once and cached under bench_out/ (nothing here is timed in the table):
  - the simulator data (seed 11; the same folder benchmarks/features.py uses), texts on ~5.5% of events;
  - a churn model trained on a 20,000-customer simulation and a tiny random-BERT sentiment model (the same
    recipe as the tests), in their own MLflow store bench_out/batch_mlflow, so the user's store is untouched;
  - the sentiment cache, filled with every distinct text of the data (a nightly run then only scores new texts).
Then each engine scores the whole base in a fresh subprocess while this process samples the summed RSS of the
subprocess tree (driver, pool workers, JVM, Python workers) every 0.2 s. Printed: wall time of the process
(start-up and model load included) and of `score_customers`, customers/s, peak GB, and whether both engines
gave the same scores. Targets for the local engine (issue 18): under 45 s and under 3 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_OF = "2024-12-01"
TRAIN_CUSTOMERS = 20_000


def _stores(bench: Path) -> dict[str, str]:
    store = bench / "batch_mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{(store / 'mlflow.db').resolve()}",
        "CHURNSENSE_ARTIFACT_ROOT": str((store / "artifacts").resolve()),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def ensure_data(folder: Path, customers: int, seed: int) -> Path:
    if not (folder / "spec.yaml").exists():
        from features.simulate import write_demo_data

        print(f"generating {customers:,} customers into {folder} (once) ...", flush=True)
        started = time.perf_counter()
        write_demo_data(folder, n_customers=customers, seed=seed)
        print(f"  generated in {time.perf_counter() - started:.0f}s", flush=True)
    return folder


def ensure_models(bench: Path) -> dict[str, str]:
    """Tiny sentiment model and small churn model (with sentiment features) in the benchmark's store."""
    saved = bench / "batch_models.json"
    if saved.exists():
        from models.churn import ChurnModel, ModelContractError

        models = json.loads(saved.read_text())
        try:
            ChurnModel.load(models["churn"])
            return models
        except ModelContractError as error:  # cached by an earlier churnsense: train again, do not fail later
            print(f"the cached churn model no longer loads ({error}); training again", flush=True)
    from models.text_scoring import CachedTextScorer, sentiment_lineage
    from tests.sentiment_helpers import build_tiny_backbone, review_texts, write_reviews
    from training.churn import train_churn
    from training.sentiment import train_sentiment

    print("training the benchmark's models (once) ...", flush=True)
    backbone = build_tiny_backbone(bench / "batch_tiny_bert")
    reviews = write_reviews(bench / "batch_reviews", review_texts(40, seed=1))
    sentiment = train_sentiment(
        reviews, None, backbone=str(backbone), max_steps=6, batch_size=16, max_length=32,
        baseline=False, quantize=True, num_threads=2,
    )  # fmt: skip
    cache = bench / "batch_cache"
    train_dir = ensure_data(bench / f"sim_{TRAIN_CUSTOMERS}", TRAIN_CUSTOMERS, seed=12)
    churn = train_churn(
        train_dir / "spec.yaml",
        None,
        sentiment_scorer=CachedTextScorer(sentiment_lineage(sentiment.model_uri), cache),
    )
    models = {"churn": churn.model_uri, "sentiment": sentiment.model_uri, "cache": str(cache)}
    saved.write_text(json.dumps(models))
    return models


def warm_cache(data: Path, models: dict[str, str]) -> dict[str, float]:
    """Score every distinct text of the data into the cache (streaming by row group); returns what it did."""
    import pyarrow.parquet as pq

    from features.text import normalise_texts
    from models.text_scoring import CachedTextScorer, sentiment_lineage

    scorer_of_cache = CachedTextScorer(
        sentiment_lineage(models["sentiment"]), models["cache"], batch_size=256
    )
    cache = scorer_of_cache.cache()
    calls = {"texts": 0}

    def scorer(texts):
        calls["texts"] += len(texts)
        return scorer_of_cache.classifier.sentiment_scores(texts)

    started = time.perf_counter()
    handle = pq.ParquetFile(data / "events.parquet")
    for group in range(handle.num_row_groups):
        texts = handle.read_row_group(group, columns=["text"]).column("text").to_pylist()
        cache.score([t for t in normalise_texts(texts) if t is not None], scorer)
    return {"scored": calls["texts"], "seconds": time.perf_counter() - started, "entries": len(cache)}


def child(engine: str, data: Path, out: Path, models: dict[str, str], chunk: int) -> None:
    """Run one engine (in its own process) and print its summary as JSON on the last line."""
    import logging

    from batch import score_customers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    summary = score_customers(
        data / "spec.yaml",
        AS_OF,
        out,
        engine=engine,
        model_uri=models["churn"],
        sentiment_model=models["sentiment"],
        cache_dir=models["cache"],
        chunk_customers=chunk,
        master="local[2]",
    )
    print(summary.render(), flush=True)
    print(json.dumps({"n": summary.n_customers, "seconds": summary.seconds, "rejected": summary.n_rejected}))


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def run_engine(engine: str, data: Path, out: Path, chunk: int, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--child", engine, "--data", str(data), "--out", str(out)]
    command += ["--chunk-customers", str(chunk)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(process.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    process.wait()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    print(output, flush=True)
    if process.returncode != 0:
        raise SystemExit(f"{engine} engine failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    load = max(load_before, os.getloadavg()[0])
    return {**result, "wall": wall, "peak_gb": peak / 2**30, "cpu": cpu, "load": load}


def compare(local_out: Path, spark_out: Path) -> str:
    import numpy as np
    import pyarrow.parquet as pq

    def read(path: Path):
        table = (
            pq.ParquetDataset(str(path)).read(columns=["customer_id", "churn_risk", "risk_band"]).to_pandas()
        )
        return table.sort_values("customer_id").reset_index(drop=True)

    a, b = read(local_out), read(spark_out)
    same_ids = a["customer_id"].equals(b["customer_id"])
    worst = (
        float(np.max(np.abs(a["churn_risk"].to_numpy() - b["churn_risk"].to_numpy())))
        if same_ids
        else float("nan")
    )
    bands = bool((a["risk_band"] == b["risk_band"]).all()) if same_ids else False
    return f"local vs spark: same customers {same_ids}, max |churn_risk difference| {worst:.1e}, same bands {bands}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument(
        "--data", type=Path, default=None, help="simulator folder (default bench_out/sim_<n>)"
    )
    parser.add_argument("--engines", default="local,spark", help="comma-separated: local, spark")
    parser.add_argument("--chunk-customers", type=int, default=50_000)
    parser.add_argument("--child", choices=["local", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bench = ROOT / "bench_out"
    env = {**os.environ, **_stores(bench)}
    os.environ.update(_stores(bench))
    data = args.data or bench / f"sim_{args.customers}"
    if args.child:
        child(
            args.child,
            data,
            args.out,
            json.loads((bench / "batch_models.json").read_text()),
            args.chunk_customers,
        )
        return
    ensure_data(data, args.customers, seed=11)
    models = ensure_models(bench)
    fill = warm_cache(data, models)
    print(
        f"sentiment cache: {fill['entries']:,} texts cached; this run scored {fill['scored']:,} new ones in "
        f"{fill['seconds']:.0f}s",
        flush=True,
    )
    results, outs = {}, {}
    for engine in args.engines.split(","):
        outs[engine] = bench / ("batch_scores.parquet" if engine == "local" else "batch_scores_spark")
        print(f"--- {engine} engine", flush=True)
        results[engine] = run_engine(engine, data, outs[engine], args.chunk_customers, env)
    import pyarrow.parquet as pq

    events = pq.ParquetFile(data / "events.parquet").metadata.num_rows
    print(f"\nbatch scoring as of {AS_OF}: {args.customers:,} customers, {events:,} events, warm sentiment cache, "
          f"chunks of {args.chunk_customers:,} customers, {os.cpu_count()} cores")  # fmt: skip
    print(
        f"{'engine':<18}{'wall s':>8}{'scoring s':>11}{'customers/s':>13}{'peak GB':>9}{'CPU s':>8}{'load':>6}"
    )
    for engine, r in results.items():
        label = "local (2 procs)" if engine == "local" else "spark local[2]"
        print(
            f"{label:<18}{r['wall']:8.1f}{r['seconds']:11.1f}{r['n'] / r['wall']:13,.0f}{r['peak_gb']:9.2f}"
            f"{r['cpu']:8.0f}{r['load']:6.1f}"
        )
    print(
        "wall: whole process (start-up, model load); scoring: inside score_customers; peak: summed RSS of the"
    )
    print(
        "process tree; CPU: user+system seconds of the tree; load: 1-min load average (other users' work too)"
    )
    if "local" in results and "spark" in results:
        print(compare(outs["local"], outs["spark"]))
    if "local" in results:
        r = results["local"]
        ok = r["wall"] < 45 and r["peak_gb"] < 3
        print(f"local engine targets (< 45 s, < 3 GB): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
