"""Hostile inputs, each a reproducer from the hardening report, against the real server and the real CLI.

Every bad input gets a 4xx naming the problem (service) or a reject row / one-line `error:` with exit 2 (CLI);
never a 5xx, a traceback, a silent drop or a shifted value. The batch job's file-level cases (shifted CSV fields,
a `.parquet` that is not Parquet, a byte that is not UTF-8, events of unknown customers, killed runs) live with
the batch engines in `tests/integration/test_batch.py`; the schema fuzzing in `test_schema_fuzz.py`.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError


@pytest.mark.slow
def test_churnsense_serve_passes_sigterm_on_and_leaves_nothing_behind(bento_tag: str):
    """A supervisor stopping `churnsense serve` must stop the server too: no process left, the port free."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import psutil

    from serving.server import free_port

    port = free_port()
    wrapper = subprocess.Popen(
        [sys.executable, "-c", "from churnsense.cli import main; main()", "serve", "--bento", bento_tag,
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert wrapper.poll() is None, "churnsense serve exited before it was ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the server never became ready")
        family = psutil.Process(wrapper.pid).children(recursive=True)
        assert family, "bentoml serve and its workers run under the wrapper"
        wrapper.send_signal(signal.SIGTERM)
        wrapper.wait(timeout=90)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        # The port is free again: nobody listens on it (SO_REUSEADDR, as every server sets it: connections the
        # server closed may sit in TIME_WAIT for a minute, held by the kernel, not by a process).
        listening = [
            c
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == "LISTEN"
        ]
        assert not listening, listening
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/sentiment", "/churn_risk", "/churn_risk_batch", "/events"])
def test_wrong_content_types_are_415_not_500(http, path: str):
    body = json.dumps({"texts": ["hi"]})
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=xyz", "text/plain", ""):
        headers = {"content-type": content_type} if content_type else {}
        response = http.post(path, content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.status_code, response.text)
        assert "application/json" in response.json()["error"]
    assert http.get("/readyz").status_code == 200


@pytest.mark.slow
def test_oversized_bodies_are_413_before_they_are_read(http):
    big = json.dumps({"texts": ["x" * 1000] * 1100})  # ~1.1 MB against the test server's 1 MB cap
    response = http.post("/sentiment", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "CHURNSENSE_MAX_BODY_MB" in response.json()["error"]

    def chunks():  # no Content-Length: the cap is enforced while reading
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024].encode()

    response = http.post("/sentiment", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    ok = http.post("/sentiment", json={"texts": ["the crew was friendly"]})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1


def test_rejected_requests_log_one_escaped_line_and_are_rate_limited():
    import logging

    from pydantic import BaseModel, ConfigDict

    from serving.request_log import OneLineRejections

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    now = [100.0]
    guard = OneLineRejections(per_second=5, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            Strict.model_validate({"bad\n[CRITICAL] forged": 1})
        except ValidationError:
            import sys

            info = sys.exc_info()
        return logging.LogRecord(
            "bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/x", "POST"), info
        )

    kept = [r for r in (record() for _ in range(8)) if guard.filter(r)]
    assert len(kept) == 5  # the rest of this second is counted, not logged
    line = kept[0].getMessage()
    assert kept[0].levelname == "WARNING" and kept[0].exc_info is None
    assert "\n" not in line and "\\n[CRITICAL] forged" in line and line.startswith("rejected request on /x")
    now[0] += 1.5
    later = record()
    assert guard.filter(later) and "3 more rejected requests not logged" in later.getMessage()
    server_error = logging.LogRecord(
        "bentoml", logging.ERROR, __file__, 1, "boom", (), (RuntimeError, RuntimeError("x"), None)
    )
    assert guard.filter(server_error) and server_error.exc_info is not None  # 5xx keep their traceback


@pytest.mark.slow
def test_the_server_log_has_no_forged_lines_and_no_tracebacks_for_bad_input(http, server):
    response = http.post("/sentiment", json={"texts": ["hi"], "bad\n[CRITICAL] forged": 1})
    assert response.status_code == 400
    http.get("/readyz")
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert not any(line.startswith("[CRITICAL] forged") for line in log.splitlines())
    assert "rejected request on /sentiment" in log and "\\n[CRITICAL] forged" in log
    assert "Traceback" not in log, log[log.index("Traceback") - 300 : log.index("Traceback") + 600]
