"""The framework's floor for `benchmarks/serving.py`: a BentoML service whose one endpoint returns a constant.

Same BentoML version, worker count, connection policy (`serving.connections`) and request path (JSON in, JSON
out, async endpoint) as the churnsense service, and no model: whatever it costs per request is what BentoML and
the HTTP stack cost.

    bentoml serve ping_service:Ping --working-dir benchmarks
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import bentoml

# The benchmark passes the churnsense service's worker count (`serving` is not importable from this folder:
# benchmarks/serving.py shadows it).
WORKERS = int(os.environ.get("PING_WORKERS") or 1)
BALANCE_CONNECTIONS = os.environ.get("PING_BALANCE_CONNECTIONS", "false").lower() == "true"


def _balance_connections() -> type:
    """`serving.connections.BalanceConnections`, loaded from its file."""
    path = Path(__file__).resolve().parents[1] / "serving" / "connections.py"
    spec = importlib.util.spec_from_file_location("churnsense_connections", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BalanceConnections


@bentoml.service(name="ping", workers=WORKERS)
class Ping:
    @bentoml.api
    async def ping(self, payload: dict | None = None) -> dict:
        """Echo nothing: {"ok": true}."""
        return {"ok": True}


if BALANCE_CONNECTIONS:
    Ping.add_asgi_middleware(_balance_connections())
