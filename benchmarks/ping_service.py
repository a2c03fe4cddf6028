"""The framework's floor for `benchmarks/serving.py`: a BentoML service whose one endpoint returns a constant.

Same BentoML version, worker count and request path (JSON in, JSON out, async endpoint) as the churnsense
service, and no model: whatever it costs per request is what BentoML and the HTTP stack cost.

    bentoml serve ping_service:Ping --working-dir benchmarks
"""

from __future__ import annotations

import os

import bentoml

# The benchmark passes the churnsense service's worker count (`serving` is not importable from this folder:
# benchmarks/serving.py shadows it).
WORKERS = int(os.environ.get("PING_WORKERS") or 1)


@bentoml.service(name="ping", workers=WORKERS)
class Ping:
    @bentoml.api
    async def ping(self, payload: dict | None = None) -> dict:
        """Echo nothing: {"ok": true}."""
        return {"ok": True}
