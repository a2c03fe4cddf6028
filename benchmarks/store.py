"""Event store benchmark: `churnsense ingest` against a plain bulk insert of the same rows, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/store.py [--customers 1000000] [--backends sqlite,postgresql]
    BENTOML_HOME=demo_out/bentoml .venv/bin/python benchmarks/store.py --serving demo_out/data/spec.yaml

The data is the simulator's (seed 11; the folder benchmarks/features.py and benchmarks/batch.py share under
bench_out/). For each backend, in one run:

- yardstick: the events, already prepared as store rows, inserted with one `executemany` per 20,000 rows into
  an empty table of the same schema (same key and indexes) in one transaction: the least any ingest into this
  schema can cost;
- ingest: `store.ingest.ingest_spec` from the files into a new store: the loaders (validation, rejects), the
  keys, the text normalisation, the idempotent inserts.

Printed: events/s of both, the ratio (target: ingest >= 0.5x the yardstick), the store's size on disk, and a
re-ingest of the same files (adds nothing; its time says what idempotency costs). PostgreSQL runs on a server
this script starts from the Debian binaries (`make postgres`), fsync off as in the tests.

With `--serving SPEC` (the data the newest Bento's churn model was trained on, e.g. the demo's), it measures
`/churn_risk` by id (history from the store) against the payload path (the same customers' whole history in the
request) on a real server per backend, at 1 and 32 clients: req/s, p50, p99, each the median of `--repeat`
rounds. Target: by-id p50 at 1 client no more than 3 ms above the payload path's.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def ensure_data(folder: Path, customers: int) -> Path:
    if not (folder / "spec.yaml").exists():
        from features.simulate import write_demo_data

        print(f"generating {customers:,} customers into {folder} (once)", flush=True)
        write_demo_data(folder, n_customers=customers, seed=11)
    return folder / "spec.yaml"


@contextlib.contextmanager
def backend(kind: str, work: Path) -> Iterator[tuple[str, str]]:
    """(URL of a new store, URL of a new yardstick database) for `kind`."""
    if kind == "sqlite":
        for name in ("store.db", "plain.db"):
            for suffix in ("", "-wal", "-shm"):
                Path(work / (name + suffix)).unlink(missing_ok=True)
        yield f"sqlite:///{work / 'store.db'}", f"sqlite:///{work / 'plain.db'}"
        return
    from tests.databases import local_postgres, new_postgres_database

    with local_postgres() as server:
        yield new_postgres_database(server), new_postgres_database(server)


def yardstick(spec_path: Path, url: str) -> tuple[int, float]:
    """Events prepared as store rows (not timed), then inserted plainly (timed): (rows, seconds)."""
    import sqlalchemy as sa

    from features.io import load_customers, load_events
    from features.spec import load_spec
    from store.ingest import INSERT_ROWS, Layout, event_keys, event_rows, layout_of
    from store.schema import create_store_engine, events, metadata, placeholders

    spec = load_spec(spec_path)
    customers, _ = load_customers(spec)
    frame, _ = load_events(spec, with_text=True)
    layout: Layout = layout_of(spec, customers)
    rows = event_rows(frame, event_keys(frame, None), layout, 0)
    engine = create_store_engine(url)
    metadata.create_all(engine, tables=[events])
    columns = [c.name for c in events.columns]
    sql = f"INSERT INTO events ({', '.join(columns)}) VALUES ({placeholders(engine, len(columns))})"
    seconds, n = 0.0, 0
    with engine.begin() as connection:
        while chunk := list(itertools.islice(rows, INSERT_ROWS)):  # prepared untimed, inserted timed
            started = time.perf_counter()
            connection.exec_driver_sql(sql, chunk)
            seconds += time.perf_counter() - started
            n += len(chunk)
        started = time.perf_counter()
    seconds += time.perf_counter() - started  # the commit
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == n
    return n, seconds


def size_of(url: str) -> str:
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        path = Path(sa.make_url(url).database)
        total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        return f"{total / 1e9:.2f} GB"
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        return connection.execute(
            sa.text("select pg_size_pretty(pg_database_size(current_database()))")
        ).scalar()


def _load_measure():  # noqa: ANN202
    """`measure` of benchmarks/serving.py (a script, not a package: its name would shadow `serving`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.measure


def sample_spec(spec_path: Path, work: Path, candidates: int) -> Path:
    """A spec over the first `candidates` customers of `spec_path` and their events, written under `work`:
    the payloads are built from it, so a 1M-customer spec need not be loaded whole."""
    import pandas as pd
    import pyarrow.parquet as pq
    import yaml

    from features.spec import load_spec

    spec = load_spec(spec_path)
    folder = work / "serving_sample"
    folder.mkdir(parents=True, exist_ok=True)
    customers = pd.read_csv(spec.base_dir / spec.customers.path, nrows=candidates, dtype=str)
    customers.to_csv(folder / "customers.csv", index=False)
    ids = customers[spec.customers.id].tolist()
    events = pq.read_table(spec.base_dir / spec.events.path, filters=[(spec.events.id, "in", ids)])
    pq.write_table(events, folder / "events.parquet")
    raw = yaml.safe_load(Path(spec_path).read_text())
    raw["customers"]["path"], raw["events"]["path"] = "customers.csv", "events.parquet"
    raw.pop("reviews", None)
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "spec.yaml"


@contextlib.contextmanager
def serving_store(kind: str, spec_path: Path, work: Path, keep: bool) -> Iterator[str]:
    """A store holding all of `spec_path`. With `keep` (SQLite only), the store is kept in `work` beside a
    marker naming the spec, and reused by the next run over the same spec (1M customers take ~11 min)."""
    from store.ingest import ingest_spec

    if keep and kind == "sqlite":
        path, marker = work / "serving-kept.db", work / "serving-kept.spec"
        url = f"sqlite:///{path}"
        if not (path.exists() and marker.exists() and marker.read_text() == str(spec_path.resolve())):
            marker.unlink(missing_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            print(
                ingest_spec(
                    spec_path, url, rejects_path=work / "serving.rejects.parquet", progress=True
                ).render()
            )
            marker.write_text(str(spec_path.resolve()))
        yield url
        return
    with backend(kind, work) as (store_url, _):
        print(ingest_spec(spec_path, store_url, rejects_path=work / "serving.rejects.parquet").render())
        yield store_url


def serving(
    spec_path: Path, backends: list[str], work: Path, seconds: float, repeat: int, keep: bool
) -> None:
    import json
    from statistics import median

    import pandas as pd

    from features.columns import CUSTOMER_ID, TIMESTAMP
    from features.pipeline import load_data
    from features.spec import load_spec
    from serving.server import ServerProcess, latest_bento_tag
    from serving.smoke import churn_request_from_tables

    measure = _load_measure()
    spec = load_spec(spec_path)
    data = load_data(load_spec(sample_spec(spec_path, work, 2_000)), with_text=True)
    as_of = pd.Timestamp(spec.labels.as_of_dates()[-1])
    before = data.events[data.events[TIMESTAMP] < as_of]
    counts = before.groupby(CUSTOMER_ID, observed=True).size()
    eligible = counts[(counts >= 10) & (counts <= 60)].index.astype(str)[:64]
    values = tuple(spec.events.values)
    payloads = [
        json.dumps(churn_request_from_tables(data.customers, data.events, c, as_of, values)).encode()
        for c in eligible
    ]
    by_id = [json.dumps({"customer_id": c, "as_of": as_of.isoformat()}).encode() for c in eligible]
    tag = latest_bento_tag()
    print(f"\nserving: Bento {tag}, {len(eligible)} customers with 10-60 events before {as_of.date()}")
    rows = []
    for kind in backends:
        with serving_store(kind, spec_path, work, keep) as store_url:
            print(f"{kind} store: {size_of(store_url)}", flush=True)
            with ServerProcess(tag, env={"CHURNSENSE_STORE_URL": store_url}) as server:
                for clients in (1, 32):
                    runs: dict[str, list] = {"payload": [], "by id": []}
                    for _ in range(repeat):
                        runs["payload"].append(
                            measure(server.url, "payload", "/churn_risk", payloads, clients, seconds)
                        )
                        runs["by id"].append(
                            measure(server.url, f"by id ({kind})", "/churn_risk", by_id, clients, seconds)
                        )
                    for name, results in runs.items():
                        rows.append(
                            (kind, name, clients, median(r.rps for r in results), median(r.p50_ms for r in results),
                             median(r.p99_ms for r in results), sum(sum(r.errors.values()) for r in results))
                        )  # fmt: skip
    print(f"\n{'store':<11}{'path':<10}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for kind, name, clients, rps, p50, p99, errors in rows:
        print(f"{kind:<11}{name:<10}{clients:>8}{rps:>9.1f}{p50:>9.2f}{p99:>9.2f}{errors:>8}")
    for kind in backends:
        p50 = {name: p for k, name, clients, _, p, _, _ in rows if k == kind and clients == 1}
        extra = p50["by id"] - p50["payload"]
        verdict = "met" if extra <= 3 else "MISSED"
        print(f"target ({kind}): by-id p50 at 1 client <= payload p50 + 3 ms: {extra:+.2f} ms ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "bench_out")
    parser.add_argument(
        "--serving", type=Path, default=None, help="spec of the served model's data (see above)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per serving measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per serving measurement")
    parser.add_argument(
        "--keep-store",
        action="store_true",
        help="serving: keep the SQLite store under --bench-dir and reuse it for the same spec",
    )
    args = parser.parse_args()
    if args.serving:
        work = args.bench_dir / "store"
        work.mkdir(parents=True, exist_ok=True)
        serving(args.serving, args.backends.split(","), work, args.duration, args.repeat, args.keep_store)
        return

    from store.ingest import ingest_spec

    spec_path = ensure_data(args.bench_dir / f"sim_{args.customers}", args.customers)
    work = args.bench_dir / "store"
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.customers:,} customers, load average {os.getloadavg()[0]:.1f}")
    header = f"{'backend':<11}{'events':>12}{'plain ev/s':>13}{'ingest ev/s':>13}{'ratio':>8}{'re-ingest s':>13}  size"
    lines = []
    for kind in args.backends.split(","):
        with backend(kind, work) as (store_url, plain_url):
            n, plain_s = yardstick(spec_path, plain_url)
            first = ingest_spec(
                spec_path, store_url, rejects_path=work / "ingest.rejects.parquet", progress=True
            )
            again = ingest_spec(spec_path, store_url, rejects_path=work / "ingest.rejects.parquet")
            assert first.events_new == n and again.events_new == 0, (first.events_new, n, again.events_new)
            ratio = (n / first.seconds) / (n / plain_s)
            lines.append(
                f"{kind:<11}{n:>12,}{n / plain_s:>13,.0f}{n / first.seconds:>13,.0f}{ratio:>7.2f}x"
                f"{again.seconds:>13.1f}  {size_of(store_url)}"
            )
            print(first.render(), flush=True)
    print("\n" + header)
    print("\n".join(lines))
    print("target: ingest >= 0.5x the plain bulk insert of the same rows (ratio column)")


if __name__ == "__main__":
    main()
