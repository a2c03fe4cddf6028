"""The BentoML service: request validation, online scoring = offline scoring, and the real server over HTTP.

Levels (STYLE anchor: BentoML's own services):
- schema tests with no model (fast);
- in-process scoring with small real models against the offline path (`build_customer_features` + `score`);
- a real `bentoml serve` of the built Bento on a free 127.0.0.1 port, spoken to with httpx.

The session fixture trains a small churn model on simulator data and a tiny random BERT sentiment model into
the session's temporary MLflow store, promotes both, and runs `churnsense build` into the temporary BENTOML_HOME.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from serving.settings import current_settings
from tests.served_models import NO_TRACKING_STORE, SERVER_LIMITS, offline_score, pick_customers, request_for

SECRET = "my-secret-complaint-text-7f3a"


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch):
    """The test limits as environment settings (the settings cache is read again around the test)."""
    for name, value in SERVER_LIMITS.items():
        monkeypatch.setenv(name, value)
    current_settings.cache_clear()
    yield current_settings()
    current_settings.cache_clear()


# --- schemas and settings: no model ------------------------------------------------------------------------


def _churn_body(**overrides) -> dict:
    body = {
        "customer": {"customer_id": "c1", "plan": "basic"},
        "events": [{"timestamp": "2024-05-01T10:00:00Z", "type": "usage", "amount": 3.0, "channel": "web"}],
        "as_of": "2024-06-01",
    }
    body.update(overrides)
    return body


def test_server_env_makes_a_relative_bentoml_home_absolute(monkeypatch, tmp_path):
    # `bentoml serve <bento>` runs in the Bento's folder, where a relative store path would not resolve.
    from serving.server import server_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENTOML_HOME", "store")
    env = server_env({"CHURNSENSE_WORKERS": "1"})
    assert env["BENTOML_HOME"] == str(tmp_path / "store")
    assert env["CHURNSENSE_WORKERS"] == "1" and env["BENTOML_DO_NOT_TRACK"] == "true"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (_churn_body(events=[{"timestamp": "2024-07-01", "type": "usage"}]), "after as_of"),
        (_churn_body(events=[{"timestamp": "not a date", "type": "usage"}]), "events.0.timestamp"),
        (_churn_body(events=[{"timestamp": "1500-01-01", "type": "usage"}]), "events.0.timestamp"),
        (_churn_body(events=[{"type": "usage"}]), "events.0.timestamp"),
        (_churn_body(events=[{"timestamp": "2024-05-01", "type": "  "}]), "events.0.type"),
        (_churn_body(events=[{"timestamp": "2024-05-01", "type": "usage", "text": " "}]), "events.0.text"),
        (
            _churn_body(events=[{"timestamp": "2024-05-01", "type": "usage", "amount": [1]}]),
            "events.0.amount",
        ),
        (_churn_body(customer={"plan": "basic"}), "customer.customer_id"),
        (_churn_body(customer={"customer_id": "c1", "plan": {"a": 1}}), "customer.plan"),
        (_churn_body(events=[{"timestamp": "2024-05-01", "type": "usage"}] * 301), "CHURNSENSE_MAX_EVENTS"),
        (
            _churn_body(events=[{"timestamp": "2024-05-01", "type": "x", "text": "hi"}] * 21),
            "CHURNSENSE_MAX_TEXTS",
        ),
        (
            _churn_body(events=[{"timestamp": "2024-05-01", "type": "x", "text": "a" * 401}]),
            "CHURNSENSE_MAX_TEXT_",
        ),
        (_churn_body(unexpected=1), "unexpected"),
    ],
)
def test_churn_request_rejects_bad_input_naming_the_field(limits, body, where):
    from serving.schemas import ChurnRiskRequest

    with pytest.raises(ValidationError) as error:
        ChurnRiskRequest.model_validate_json(json.dumps(body))
    assert where in str(error.value)


def test_churn_request_rejects_nan_and_infinity(limits):
    from serving.schemas import ChurnRiskRequest

    nan_profile = '{"customer": {"customer_id": "c1", "age": NaN}}'
    inf_value = '{"customer": {"customer_id": "c1"}, "events": [{"timestamp": "2024-01-01", "type": "a", "x": Infinity}]}'
    for body in (nan_profile, inf_value):
        with pytest.raises(ValidationError, match="finite number"):
            ChurnRiskRequest.model_validate_json(body)


def test_validation_errors_never_echo_what_the_customer_wrote(limits):
    from serving.schemas import ChurnRiskRequest, SentimentRequest

    with pytest.raises(ValidationError) as error:
        SentimentRequest.model_validate({"texts": [SECRET * 20]})
    with pytest.raises(ValidationError) as nested:
        ChurnRiskRequest.model_validate(_churn_body(customer={"customer_id": SECRET, "plan": [SECRET]}))
    assert SECRET not in str(error.value) and SECRET not in str(nested.value)


def test_churn_request_without_as_of_and_names_stripped(limits):
    from serving.schemas import ChurnRiskRequest

    request = ChurnRiskRequest.model_validate(
        {"customer": {"customer_id": " c1 "}, "events": [{"timestamp": "2024-05-01", "type": " usage "}]}
    )
    assert request.as_of is None  # scored as of the moment its batch runs
    assert request.customer.customer_id == "c1" and request.events[0].type == "usage"
    assert request.events[0].timestamp.tzinfo is not None  # naive times are read as UTC


def test_batch_request_limits(limits):
    from serving.schemas import ChurnRiskBatchRequest

    one = _churn_body()
    with pytest.raises(ValidationError, match="CHURNSENSE_BATCH_MAX_CUSTOMERS"):
        ChurnRiskBatchRequest.model_validate({"customers": [one] * 7})
    with pytest.raises(ValidationError, match="repeat"):
        ChurnRiskBatchRequest.model_validate({"customers": [one, one]})


def test_micro_batcher_coalesces_concurrent_calls_and_keeps_order():
    import asyncio
    import time

    from serving.batching import MicroBatcher

    calls: list[list[int]] = []

    def compute(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        time.sleep(0.05)  # while this runs, the other callers queue
        return [ValueError("seven") if item == 7 else item * 10 for item in items]

    async def main():
        batcher = MicroBatcher(compute, max_batch=4)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # a lone request starts at once, without waiting for company
        rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 9)), return_exceptions=True)
        return batcher, [await first, *rest]

    batcher, results = asyncio.run(main())
    assert results[:7] == [0, 10, 20, 30, 40, 50, 60] and results[8] == 80
    assert isinstance(results[7], ValueError)  # only the failing item's caller sees its error
    assert [len(c) for c in calls] == [1, 4, 4]  # the first runs at once, the rest share batches
    assert batcher.batches == 3 and batcher.items == 9


def test_micro_batcher_on_the_loop_settles_so_late_arrivals_share_the_batch():
    import asyncio
    import time

    from serving.batching import MicroBatcher

    def run(settle_s: float, settle_if=lambda: True) -> list[int]:
        calls: list[list[int]] = []

        def compute(items: list[int]) -> list[int]:
            calls.append(items)
            time.sleep(0.02)  # on the loop: nothing else runs meanwhile
            return [item * 2 for item in items]

        batcher = MicroBatcher(compute, max_batch=64, in_thread=False, settle_s=settle_s, settle_if=settle_if)

        async def request(i: int) -> int:
            for _ in range(3):  # a request takes a few loop turns (body, middlewares) before it submits
                await asyncio.sleep(0)
            return await batcher.submit(i)

        async def main():
            first = asyncio.ensure_future(batcher.submit(0))
            rest = [asyncio.ensure_future(request(i)) for i in range(1, 11)]
            return await asyncio.gather(first, *rest)

        assert asyncio.run(main()) == [2 * i for i in range(11)]
        return [len(c) for c in calls]

    assert run(settle_s=0.0) == [1, 10]  # the batch starts before the others got through the loop
    assert run(settle_s=0.001) == [11]  # a millisecond's settling lets them join it
    # Told that no one else is on the way (a lone client), the batcher does not wait: the batch starts at once.
    assert run(settle_s=0.001, settle_if=lambda: False) == [1, 10]
    assert run(settle_s=0.001, settle_if=lambda: True) == [11]


def test_micro_batcher_on_the_loop_lets_other_work_run_between_batches_when_it_does_not_settle():
    """A lone /churn_risk_batch of many customers is several batches computed on the event loop: between two
    of them the loop must get a turn (health checks, other endpoints), settling or not."""
    import asyncio

    from serving.batching import MicroBatcher

    log: list[str] = []

    def compute(items: list[int]) -> list[int]:
        log.append("batch")
        return items

    async def main():
        batcher = MicroBatcher(compute, max_batch=2, in_thread=False, settle_s=0.001, settle_if=lambda: False)

        async def other():
            for _ in range(20):
                log.append("other")
                await asyncio.sleep(0)

        return await asyncio.gather(*(batcher.submit(i) for i in range(6)), other())

    assert asyncio.run(main())[:6] == list(range(6))
    batches = [i for i, entry in enumerate(log) if entry == "batch"]
    assert len(batches) == 3
    assert all("other" in log[a + 1 : b] for a, b in zip(batches, batches[1:], strict=False))


def test_the_guard_counts_the_requests_inside_so_a_lone_request_skips_the_settle():
    """`serving.guard.inside` is what the churn batcher asks before it settles: it must count a request from the
    door to its answer, on every way out (an answer, a refusal, an error), and only the paths asked about."""
    import asyncio

    from serving.guard import RequestGuard, inside

    seen: list[int] = []

    async def app(scope, receive, send):
        seen.append(inside("/churn_risk"))
        if scope["path"] == "/churn_risk" and scope.get("boom"):
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = RequestGuard(app, paths=("/churn_risk", "/events"), max_body_bytes=100)

    async def call(path: str, content_type: str = "application/json", body: bytes = b"{}", **extra):
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            pass

        headers = [(b"content-type", content_type.encode())]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers, **extra}
        await guard(scope, receive, send)

    async def main():
        await call("/churn_risk")
        await call("/events")  # another path: not counted as churn company
        await call("/churn_risk", content_type="text/plain")  # refused at the door (415)
        await call("/churn_risk", body=b"x" * 200)  # refused while reading (413)
        with pytest.raises(RuntimeError, match="boom"):  # the app's error goes through the guard untouched
            await call("/churn_risk", boom=True)

        # Two at once: each sees the other inside.
        gate = asyncio.Event()

        async def slow(scope, receive, send):
            seen.append(inside("/churn_risk"))
            await gate.wait()

        guard.app = slow
        both = asyncio.gather(call("/churn_risk"), call("/churn_risk"))
        await asyncio.sleep(0.01)
        during = inside("/churn_risk")
        gate.set()
        await both
        return during

    during = asyncio.run(main())
    assert seen == [1, 0, 1, 1, 2]  # refused requests never reach the app; the second of two sees the first
    assert during == 2
    assert inside("/churn_risk", "/events") == 0  # every way out let the count down


def test_micro_batcher_counts_units_and_sheds_items_that_waited_too_long():
    import asyncio
    import time

    from serving.batching import MicroBatcher

    def compute(items: list[list[str]]) -> list[int]:
        time.sleep(1.0)
        return [len(item) for item in items]

    async def main():
        batcher = MicroBatcher(
            compute, max_batch=3, size=len, max_latency_s=0.5, overloaded=lambda: TimeoutError("busy")
        )
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.01)  # the first batch is running (1 s); these wait longer than 0.5 s
        rest = await asyncio.gather(batcher.submit(["b", "c"]), batcher.submit(["d"]), return_exceptions=True)
        return await first, rest, batcher

    first, rest, batcher = asyncio.run(main())
    assert first == 1
    assert all(isinstance(r, TimeoutError) for r in rest) and batcher.shed == 2


def test_balance_connections_closes_only_the_busier_workers_excess(tmp_path):
    import asyncio

    from serving.connections import SHED_EVERY_S, SYNC_S, BalanceConnections, WorkerCounts

    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    clock = [100.0]
    workers = {
        name: BalanceConnections(app, counts=WorkerCounts(tmp_path, name=name), clock=lambda: clock[0])
        for name in ("a", "b")
    }

    def request(worker: str, port: int) -> bytes | None:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "client": ("127.0.0.1", port), "server": ("127.0.0.1", 3000), "path": "/x"}
        asyncio.run(workers[worker](scope, None, send))
        return dict(sent[0]["headers"]).get(b"connection")

    def one_round(b_ports, a_ports) -> list[bytes | None]:
        return [request("b", port) for port in b_ports] + [request("a", port) for port in a_ports]

    step = 1.5 * SYNC_S  # each round: every worker re-counts, and may close one more connection
    assert step > SHED_EVERY_S
    assert set(one_round([1, 2], range(11, 17))) == {b"keep-alive"}  # first sight: counts still partial
    clock[0] += step
    # a holds 6 connections and b 2: the fair share is 4, so a closes one (port 11) ...
    assert one_round([1, 2], range(11, 17)) == [b"keep-alive"] * 2 + [b"close"] + [b"keep-alive"] * 5
    clock[0] += step
    # ... whose client reconnects and lands on b; a still holds 5 against b's 3 and closes one more (port 12) ...
    assert one_round([1, 2, 21], range(12, 17)) == [b"keep-alive"] * 3 + [b"close"] + [b"keep-alive"] * 4
    clock[0] += step
    # ... which lands on b too: 4 and 4, nothing more to close.
    assert set(one_round([1, 2, 21, 22], range(13, 17))) == {b"keep-alive"}
    assert (workers["a"].closed, workers["b"].closed) == (2, 0)
    assert sorted(WorkerCounts(tmp_path, name="a").all()) == [3, 4]  # b published before it saw port 22


def test_worker_counts_write_a_changed_count_at_once_and_an_unchanged_one_only_to_stay_fresh(
    tmp_path, monkeypatch
):
    import serving.connections as connections

    now = [1000.0]
    monkeypatch.setattr(connections.time, "time", lambda: now[0])
    writes: list[str] = []
    real = connections.atomic_write_text

    def counted(text, path):  # noqa: ANN001, ANN202
        writes.append(text)
        real(text, path)

    monkeypatch.setattr(connections, "atomic_write_text", counted)
    counts = connections.WorkerCounts(tmp_path, name="a")
    counts.publish(3)
    now[0] += connections.SYNC_S
    counts.publish(3)  # unchanged, and fresh: no write (the heartbeat calls this 20 times a second)
    counts.publish(4)  # changed: written at once
    assert writes == ["3", "4"]
    now[0] += connections.REFRESH_S
    counts.publish(4)  # unchanged but a third of the way to stale: written again, so others keep counting it
    assert writes == ["3", "4", "4"] and connections.REFRESH_S < connections.STALE_S
    assert counts.all() == [4]


@pytest.mark.slow
def test_online_scoring_in_process_equalsoffline_score(models, canonical):
    """`serving.scoring` with the real (small) models gives the batch path's numbers for the same customer."""
    from serving.answers import ModelVersions
    from serving.schemas import ChurnRiskRequest, TextSentiment
    from serving.scoring import request_texts, score_requests

    churn, sentiment = models
    customers, events, as_of = canonical
    ids = pick_customers(events, as_of, 3)
    assert ids, "the simulator should give customers with texts"
    requests = [ChurnRiskRequest.model_validate(request_for(customers, events, cid, as_of)) for cid in ids]
    texts = list(dict.fromkeys(t for r in requests for t in request_texts(r)))
    proba = sentiment.predict_proba(texts)
    polarity = sentiment.scores_from_proba(proba)
    scored = {
        t: TextSentiment(label="x", score=0.0, scores={}, polarity=float(p))
        for t, p in zip(texts, polarity, strict=True)
    }
    from models.aspect_scoring import CachedAspectLabeler

    about = dict(zip(texts, CachedAspectLabeler(churn.aspect_lineage)(texts), strict=True))
    # Per customer (one request each, as the service gets them), and all three in one vectorised call.
    for cid, request in zip(ids, requests, strict=True):
        own = {t: scored[t] for t in request_texts(request)}
        (answer,) = score_requests(
            [request],
            churn.schema,
            churn.score_rows,
            own,
            ModelVersions(churn="1", sentiment="1", sentiment_scoring_id="test"),
            aspects=about,
        )
        offline = offline_score(models, customers, events, cid, as_of)
        assert math.isclose(answer.churn_risk, float(offline["churn_risk"]), rel_tol=0, abs_tol=1e-9)
        assert answer.risk_band == offline["risk_band"]
    versions = ModelVersions(churn="1", sentiment="1", sentiment_scoring_id="test")
    together = score_requests(requests, churn.schema, churn.score_rows, scored, versions, aspects=about)
    assert [a.customer_id for a in together] == ids
    # Concurrent requests about the same customer, and one without as_of (scored as of `now`), in one batch.
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    undated = requests[1].model_copy(update={"as_of": None})
    mixed = score_requests(
        [requests[0], requests[0], undated],
        churn.schema,
        churn.score_rows,
        scored,
        versions,
        now,
        aspects=about,
    )
    assert mixed[0] == mixed[1] == together[0]
    dated = requests[1].model_copy(update={"as_of": now})
    (alone,) = score_requests([dated], churn.schema, churn.score_rows, scored, versions, aspects=about)
    assert mixed[2] == alone and alone.as_of == now


@pytest.mark.slow
def test_bento_carries_both_models_and_the_aspect_and_survival_champions(bento_tag: str, trained):
    import bentoml

    names = sorted(m.tag.name for m in bentoml.get(bento_tag).info.all_models)
    assert names == ["churnsense-aspects", "churnsense-churn", "churnsense-sentiment", "churnsense-survival"]
    labels = {
        m.tag.name: bentoml.models.get(m.tag).info.labels for m in bentoml.get(bento_tag).info.all_models
    }
    for name, found in labels.items():
        assert found["mlflow_version"] and found["mlflow_run_id"]
        assert found["mlflow_version"] == trained["versions"][name.removeprefix("churnsense-")]
    from features.engine import FEATURE_VERSION

    churn = labels["churnsense-churn"]
    assert churn["feature_version"] == FEATURE_VERSION
    # The optional models the build paired with this churn model: the service serves exactly these.
    for name in ("churnsense-aspects", "churnsense-survival"):
        assert churn[f"{name}_version"] == labels[name]["mlflow_version"]
    # Every Python package pinned to the version tested here, and no training code shipped.
    from importlib.metadata import version

    bento = bentoml.get(bento_tag)
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().split()
    assert f"torch=={version('torch')}" in requirements and f"bentoml=={version('bentoml')}" in requirements
    assert f"scikit-survival=={version('scikit-survival')}" in requirements
    assert all("==" in line for line in requirements if line and not line.startswith("#"))
    shipped = {
        p.relative_to(Path(bento.path) / "src").parts[0] for p in (Path(bento.path) / "src").rglob("*.py")
    }
    assert (
        "training" not in shipped and "batch" not in shipped and {"serving", "models", "features"} <= shipped
    )


@pytest.mark.slow
def test_framework_endpoints_keep_working(http):
    for path in ("/healthz", "/readyz", "/livez", "/metrics", "/docs.json", "/"):
        assert http.get(path).status_code == 200, path
    paths = http.get("/docs.json").json()["paths"]
    assert {"/churn_risk", "/churn_risk_batch", "/sentiment"} <= set(paths)


@pytest.mark.slow
def test_keep_alive_connections_end_up_evenly_spread_over_the_workers(server):
    import threading
    import time

    import httpx
    import psutil

    def established_per_worker() -> list[int]:
        workers = psutil.Process(server.process.pid).children(recursive=True)
        return sorted(
            sum(c.status == "ESTABLISHED" and c.laddr.port == server.port for c in w.net_connections())
            for w in workers
        )

    clients = [httpx.Client(base_url=server.url, timeout=30.0) for _ in range(12)]
    stop = time.monotonic() + 4.0

    def keep_asking(client):
        while time.monotonic() < stop:
            assert client.get("/livez").status_code == 200

    try:
        threads = [threading.Thread(target=keep_asking, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        spread = established_per_worker()  # the clients still hold their connections open
    finally:
        for client in clients:
            client.close()
    assert len(spread) == 2 and sum(spread) >= 12  # (other tests' session client may hold one more)
    assert spread[1] - spread[0] <= 2, spread


@pytest.mark.slow
def test_sentiment_endpoint(http, models, trained):
    texts = ["the flight was great today", "the staff was rude again"]
    plain = http.post("/sentiment", json={"texts": texts})
    assert plain.status_code == 200, plain.text
    assert all(result["aspect"] is None for result in plain.json()["results"])  # aspects only when asked
    response = http.post("/sentiment", json={"texts": texts, "aspects": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["scores"] for r in body["results"]] == [r["scores"] for r in plain.json()["results"]]
    assert body["model_version"] == trained["versions"]["sentiment"]
    assert body["scoring_id"] == models[1].scoring_id
    expected = models[1].predict(texts)
    from models.aspects import load_aspect_model

    assert body["aspect_model_version"] == trained["versions"]["aspects"]
    aspects = load_aspect_model("models:/churnsense-aspects@champion").predict(texts).to_dicts()
    for result, want, aspect in zip(body["results"], expected, aspects, strict=True):
        assert set(result) == {"label", "score", "scores", "aspect"}
        assert result["aspect"] == aspect  # the served aspect model, bit for bit
        assert result["label"] == want.label
        assert result["score"] == pytest.approx(want.score, abs=1e-6)
        assert result["scores"] == pytest.approx(want.probabilities, abs=1e-6)
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_evidence_can_be_left_out_and_changes_nothing_else(http, canonical):
    """`"evidence": false` (a smaller answer), alone and in a batch beside a request that wants it."""
    customers, events, as_of = canonical
    customer_id, other_id = pick_customers(events, as_of, 2)
    body = request_for(customers, events, customer_id, as_of)
    other = request_for(customers, events, other_id, as_of)
    full = http.post("/churn_risk", json=body)
    lean = http.post("/churn_risk", json=body | {"evidence": False})
    assert full.status_code == 200 and lean.status_code == 200, lean.text
    assert any(r["evidence"] for r in full.json()["reasons"])
    assert all(r["evidence"] is None for r in lean.json()["reasons"])
    strip = lambda answer: answer | {"reasons": [r | {"evidence": None} for r in answer["reasons"]]}  # noqa: E731
    assert strip(full.json()) == lean.json()
    both = http.post("/churn_risk_batch", json={"customers": [body | {"evidence": False}, other]})
    assert both.status_code == 200, both.text
    lean_again, other_full = both.json()["results"]
    assert lean_again == lean.json() and other_full == http.post("/churn_risk", json=other).json()
    assert any(r["evidence"] for r in other_full["reasons"])


def test_churn_risk_over_http_equals_offline_score(http, models, canonical, trained):
    customers, events, as_of = canonical
    (customer_id,) = pick_customers(events, as_of, 1)
    body = request_for(customers, events, customer_id, as_of)
    response = http.post("/churn_risk", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    offline = offline_score(models, customers, events, customer_id, as_of)

    assert answer["customer_id"] == customer_id
    assert abs(answer["churn_risk"] - float(offline["churn_risk"])) <= 1e-9
    assert answer["risk_band"] == offline["risk_band"]
    assert [r["feature"] for r in answer["reasons"]] == [r["feature"] for r in offline["reasons"]]
    for got, want in zip(answer["reasons"], offline["reasons"], strict=True):
        assert got["contribution"] == pytest.approx(want["contribution"], abs=1e-9)
    assert pd.Timestamp(answer["as_of"]) == pd.Timestamp(as_of, tz="UTC")
    versions = answer["model_versions"]
    assert {k: versions[k] for k in ("churn", "sentiment", "aspects", "survival")} == trained["versions"]
    assert versions["sentiment_scoring_id"] == models[1].scoring_id
    # Reasons reconcile with the risk: base + listed contributions + the rest = logit(risk).
    total = (
        answer["base_value"]
        + sum(r["contribution"] for r in answer["reasons"])
        + answer["other_contribution"]
    )
    assert total == pytest.approx(float(np.log(answer["churn_risk"] / (1 - answer["churn_risk"]))), abs=1e-9)

    texts = [e["text"] for e in body["events"] if "text" in e]
    polarity = models[1].sentiment_scores([t.strip() for t in texts])
    summary = answer["sentiment"]
    assert summary["count"] == len(texts)
    assert summary["mean"] == pytest.approx(float(np.mean(polarity)), abs=1e-6)
    assert summary["min"] == pytest.approx(float(np.min(polarity)), abs=1e-6)
    assert sum(summary["labels"].values()) == len(texts)


@pytest.mark.slow
def test_churn_risk_batch_equals_single_calls(http, canonical):
    customers, events, as_of = canonical
    ids = pick_customers(events, as_of, 3)
    bodies = [request_for(customers, events, cid, as_of) for cid in ids]
    # One customer without any history and with as_of defaulting to now.
    bodies.append({"customer": {**bodies[0]["customer"], "customer_id": "newcomer"}, "events": []})
    response = http.post("/churn_risk_batch", json={"customers": bodies})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["customer_id"] for r in results] == [*ids, "newcomer"]
    for body, result in zip(bodies[:3], results, strict=False):
        single = http.post("/churn_risk", json=body).json()
        assert result["churn_risk"] == single["churn_risk"]
        assert result["reasons"] == single["reasons"]
    assert results[-1]["sentiment"]["count"] == 0
    assert 0.0 <= results[-1]["churn_risk"] <= 1.0


@pytest.mark.slow
def test_unknown_event_types_count_as_other_not_an_error(http, canonical):
    customers, events, as_of = canonical
    (customer_id,) = pick_customers(events, as_of, 1)
    body = request_for(customers, events, customer_id, as_of)
    body["events"].append({"timestamp": body["events"][-1]["timestamp"], "type": "carrier_pigeon"})
    response = http.post("/churn_risk", json=body)
    assert response.status_code == 200, response.text


def _bad_requests(customers, events, as_of) -> list[tuple[str, object, str]]:
    (customer_id,) = pick_customers(events, as_of, 1)
    good = request_for(customers, events, customer_id, as_of)
    profile_field = next(k for k in good["customer"] if k not in ("customer_id", "signup_date"))

    def churn(**changes) -> dict:
        return {**json.loads(json.dumps(good)), **changes}

    without_profile = churn(customer={k: v for k, v in good["customer"].items() if k != profile_field})
    other_without_profile = {
        **without_profile,
        "customer": {**without_profile["customer"], "customer_id": "other"},
    }
    string_amount = churn(events=[{"timestamp": "2024-03-01", "type": "billing", "amount": "lots"}])
    many_events = churn(events=[{"timestamp": "2024-03-01", "type": "usage"}] * 301)
    many_texts = churn(events=[{"timestamp": "2024-03-01", "type": "complaint", "text": "bad"}] * 21)
    future = churn(events=[{"timestamp": "2030-01-01", "type": "usage"}])
    return [
        ("/sentiment", {"texts": []}, "texts"),
        ("/sentiment", {"texts": [""]}, "empty"),
        ("/sentiment", {"texts": ["x" * 401]}, "CHURNSENSE_MAX_TEXT_CHARS"),
        ("/sentiment", {"texts": ["ok"] * 21}, "CHURNSENSE_MAX_TEXTS"),
        ("/sentiment", {"texts": "not a list"}, "texts"),
        ("/sentiment", {"text": ["wrong field"]}, "texts"),
        ("/sentiment", "{not json", "json"),
        ("/churn_risk", {"events": []}, "customer"),
        ("/churn_risk", churn(customer={"customer_id": 12}), "customer_id"),
        ("/churn_risk", without_profile, profile_field),
        ("/churn_risk", string_amount, "amount"),
        ("/churn_risk", many_events, "CHURNSENSE_MAX_EVENTS"),
        ("/churn_risk", many_texts, "CHURNSENSE_MAX_TEXTS"),
        ("/churn_risk", future, "after as_of"),
        ("/churn_risk", '{"customer": {"customer_id": "c", "age": NaN}}', "finite"),
        (
            "/churn_risk",
            churn(events=[{"timestamp": "2024-03-01", "type": "x", "text": SECRET + " " * 500}]),
            "text",
        ),
        ("/classify_texts", {"texts": ["ok"]}, "not found"),  # an internal hop, not served in this mode
        ("/churn_risk", {"customer_id": "C0000001", "events": good["events"]}, "customer_id alone"),
        ("/churn_risk", {"customer_id": "x' OR 1=1 --"}, "not in the event store"),
        ("/churn_risk_batch", {"customers": [good, {"customer_id": "nobody"}]}, "not in the event store"),
        ("/events", {"events": []}, "events"),
        ("/events", {"events": [{"customer_id": "c1", "type": "call"}]}, "timestamp"),
        (
            "/events",
            {"events": [{"customer_id": "nobody", "timestamp": "2024-03-01", "type": "x"}]},
            "nobody",
        ),
        (
            "/events",
            {"events": [{"customer_id": "C0000001", "timestamp": "2024-03-01", "type": "x", "amount": "12"}]},
            "amount",
        ),  # fmt: skip
        ("/churn_risk_batch", {"customers": [good] * 7}, "CHURNSENSE_BATCH_MAX_CUSTOMERS"),
        ("/churn_risk_batch", {"customers": [good, good]}, "repeat"),
        ("/churn_risk_batch", {"customers": [good, other_without_profile]}, profile_field),
    ]


@pytest.mark.slow
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_stays_healthy(http, server, canonical):
    customers, events, as_of = canonical
    for path, body, where in _bad_requests(customers, events, as_of):
        content = body if isinstance(body, str) else json.dumps(body)
        response = http.post(path, content=content, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (path, where, response.status_code, response.text)
        assert where.lower() in response.text.lower(), (path, where, response.text)
    assert http.get("/healthz").status_code == 200
    assert http.post("/sentiment", json={"texts": ["still fine"]}).status_code == 200
    assert SECRET not in server.log_path.read_text(errors="replace")


@pytest.mark.slow
def test_concurrent_requests_share_batches_and_answer_like_single_ones(http, canonical):
    """Many clients at once get the answers single calls get."""
    from concurrent.futures import ThreadPoolExecutor

    customers, events, as_of = canonical
    ids = pick_customers(events, as_of, 4)
    bodies = [request_for(customers, events, cid, as_of) for cid in ids]
    singles = [http.post("/churn_risk", json=body).json() for body in bodies]
    texts = [f"the {word} was great today, ticket {i}" for i, word in enumerate(["app", "crew", "seat"] * 50)]
    single_text = http.post("/sentiment", json={"texts": texts[:1]}).json()["results"][0]

    def churn(i: int):
        return http.post("/churn_risk", json=bodies[i % len(bodies)])

    def sentiment(i: int):
        return http.post("/sentiment", json={"texts": [texts[i]]})

    with ThreadPoolExecutor(max_workers=16) as pool:
        churn_answers = list(pool.map(churn, range(48)))
        sentiment_answers = list(pool.map(sentiment, range(len(texts))))
    assert all(r.status_code == 200 for r in churn_answers + sentiment_answers), {
        r.status_code for r in churn_answers + sentiment_answers
    }
    for i, response in enumerate(churn_answers):
        want = singles[i % len(bodies)]
        got = response.json()
        assert got["customer_id"] == want["customer_id"]
        # Texts may share a forward pass with other requests' texts (other padding): equal to float noise.
        assert got["churn_risk"] == pytest.approx(want["churn_risk"], abs=1e-6)
    first = sentiment_answers[0].json()["results"][0]
    assert first["label"] == single_text["label"]
    assert first["scores"] == pytest.approx(single_text["scores"], abs=1e-5)


@pytest.mark.slow
def test_bentoml_batching_mode_answers_the_same_under_concurrency(bentoml_batching_server, http, canonical):
    """Through /classify_texts: more calls than BentoML's client session serves before it is recycled (the
    service turns recycling off; with it on, some of these fail with 500)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    customers, events, as_of = canonical
    (customer_id,) = pick_customers(events, as_of, 1)
    body = request_for(customers, events, customer_id, as_of)
    texts = [f"the {word} was awful again, ticket {i}" for i, word in enumerate(["app", "crew", "seat"] * 50)]
    with httpx.Client(base_url=bentoml_batching_server.url, timeout=60) as hop:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda t: hop.post("/sentiment", json={"texts": [t]}), texts))
        assert [r.status_code for r in answers] == [200] * len(texts)
        churn = hop.post("/churn_risk", json=body).json()
        sentiment = hop.post("/sentiment", json={"texts": texts[:2]}).json()
    default = http.post("/churn_risk", json=body).json()
    assert churn["churn_risk"] == pytest.approx(default["churn_risk"], abs=1e-9)
    assert churn["sentiment"]["labels"] == default["sentiment"]["labels"]
    assert churn["sentiment"]["mean"] == pytest.approx(default["sentiment"]["mean"], abs=1e-9)
    expected = http.post("/sentiment", json={"texts": texts[:2]}).json()
    for got, want in zip(sentiment["results"], expected["results"], strict=True):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)


@pytest.mark.slow
def test_phrases_are_explained_only_when_asked(http, canonical):
    """Phrases cost ~20 model passes per new text: evidence quotes texts without them unless `"phrases": true`,
    which changes nothing else; asking for phrases without evidence is a 400 naming the field."""
    customers, events, as_of = canonical
    texted = events[events["text"].notna()]
    customer_id = pick_customers(texted, as_of, 1)[0]
    body = request_for(customers, events, customer_id, as_of)
    plain, explained = (http.post("/churn_risk", json=body | {"phrases": p}) for p in (False, True))
    assert plain.status_code == 200 and explained.status_code == 200, explained.text

    def quoted(answer: dict) -> list[dict]:
        return [
            e for r in answer["reasons"] if r["evidence"] for e in r["evidence"]["events"] if e.get("text")
        ]

    assert quoted(explained.json()), "the customer's evidence quotes texts"
    assert all("phrase" not in e for e in quoted(plain.json()))
    for event in quoted(explained.json()):
        phrase = event["phrase"]
        assert event["text"][phrase["start"] : phrase["end"]] == phrase["phrase"]
    strip = lambda a: [{k: v for k, v in e.items() if k != "phrase"} for e in quoted(a)]  # noqa: E731
    assert strip(explained.json()) == quoted(plain.json())
    assert explained.json()["churn_risk"] == plain.json()["churn_risk"]
    refused = http.post("/churn_risk", json=body | {"evidence": False, "phrases": True})
    assert refused.status_code == 400 and "phrases" in refused.text


def _series(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus series on /metrics (0 when absent), matched by name and the given labels."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(","))
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_answers_per_band_texts_per_label_and_missing_fields(
    postgres_backed_server, canonical, trained
):
    """/metrics carries churnsense's own series: they move by exactly what the requests sent. On the one-worker
    server: BentoML 1.4.39 answers /metrics from the worker that takes the request (its own request counters
    too), so with two workers a scrape may not see the worker that answered."""
    import httpx

    http = httpx.Client(base_url=postgres_backed_server.url, timeout=60)
    customers, events, as_of = canonical
    (customer_id,) = pick_customers(events, as_of, 1)
    body = request_for(customers, events, customer_id, as_of)
    field = next(k for k in body["customer"] if k not in ("customer_id", "signup_date"))
    body["customer"][field] = None  # one profile field the model reads, missing
    before = http.get("/metrics").text
    answer = http.post("/churn_risk", json=body).json()
    texts = http.post("/sentiment", json={"texts": ["thanks, that fixed it", "still broken"]}).json()
    after = http.get("/metrics").text

    def moved(name: str, **labels: str) -> float:
        return _series(after, name, **labels) - _series(before, name, **labels)

    band = answer["risk_band"]
    assert (
        moved("churnsense_churn_answers_total", risk_band=band, churn_model=trained["versions"]["churn"]) == 1
    )
    assert moved("churnsense_profile_fields_total", field=field, state="missing") == 1
    assert moved("churnsense_profile_fields_total", field=field, state="sent") == 0
    labels = [r["label"] for r in texts["results"]]
    for label in set(labels):
        assert moved("churnsense_texts_total", label=label, endpoint="sentiment") == labels.count(label)
    n_texts = sum(1 for e in body["events"] if (e.get("text") or "").strip())
    assert n_texts and moved("churnsense_texts_total", endpoint="churn_risk") == n_texts
    versions = trained["versions"]
    assert (
        _series(after, "churnsense_model_info", churn=versions["churn"], survival=versions["survival"]) == 1
    )


def test_a_second_server_on_the_same_store_leaves_the_first_ones_metrics_counting(
    postgres_backed_server, bento_tag
):
    """`bentoml serve` empties the store's Prometheus directory as it starts. A second server on the same
    BENTOML_HOME (this suite's servers, a blue/green pair) wiped the files the first one's worker counts in, and
    the first server's /metrics silently stopped moving. Each server keeps its own directory (`serving.server`)."""
    import httpx

    from churnsense.errors import UserError
    from serving.server import ServerProcess

    http = httpx.Client(base_url=postgres_backed_server.url, timeout=60)

    def counted() -> float:
        return _series(http.get("/metrics").text, "churnsense_texts_total", endpoint="sentiment")

    assert http.post("/sentiment", json={"texts": ["warm up the series"]}).status_code == 200
    before = counted()
    env = {**SERVER_LIMITS, **NO_TRACKING_STORE, "CHURNSENSE_WORKERS": "1"}
    with ServerProcess(bento_tag, env=env) as second:
        assert httpx.get(f"{second.url}/readyz", timeout=10).status_code == 200
        assert second.metrics_dir is not None and second.metrics_dir.is_dir()
        own = second.metrics_dir
    assert not own.exists()  # removed with its server
    # A server that never comes up leaves no directory behind either.
    before_dirs = set(own.parent.iterdir())
    with pytest.raises(UserError, match="exited"):
        ServerProcess("churnsense:no-such-bento", env=env).start(ready_timeout_s=120)
    assert set(own.parent.iterdir()) == before_dirs
    assert http.post("/sentiment", json={"texts": ["late again", "thanks, fixed"]}).status_code == 200
    assert counted() - before == 2


def test_the_server_imports_the_served_code_not_this_checkouts(tmp_path):
    """The process that starts `bentoml serve` must import nothing of churnsense: a Bento carries its own
    `serving` package, and one already imported from this checkout would be served in its place (an older
    Bento then ran with today's `serving`). Here a different `serving.service` is served from a working
    directory while this checkout's `serving` is importable too: the served one must answer."""
    import httpx

    from serving.server import ServerProcess

    package = tmp_path / "serving"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "service.py").write_text(
        "import bentoml\n\n\n@bentoml.service\nclass Probe:\n    @bentoml.api\n"
        "    def echo(self, text: str) -> str:\n        return 'probe: ' + text\n"
    )
    with ServerProcess("serving.service:Probe", working_dir=tmp_path) as server:
        answer = httpx.post(f"{server.url}/echo", json={"text": "hi"}, timeout=30)
    assert answer.status_code == 200 and answer.text == "probe: hi"
