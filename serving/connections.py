"""Keep the service's keep-alive connections spread evenly over its workers.

BentoML's workers accept connections from one shared listening socket, and a worker keeps every connection it
accepts for as long as the client keeps it alive. A client that opens its connections in a burst (a connection
pool warming up) often lands most of them on whichever worker woke first: with 32 clients and 2 workers we saw
29/3 and 31/1 splits that lasted the whole run (upstream: bentoml/BentoML#5426). One worker then queues while
the other idles, and both batch badly: /sentiment served ~200 texts/s at 31/1 against ~300 at 16/16.

Asking clients to reconnect every N requests (nginx's `keepalive_requests`) does not fix it: where a
connection lands is a coin toss, and the split wanders, to 32/0 at times. So `BalanceConnections` closes
connections only where they are too many. Each worker counts its open connections (clients seen in the last
second; under load every connection sends several requests a second) and publishes the count in a small file
shared by the server's workers. A worker holding more than its fair share, ceil(total / workers), answers one
request with `Connection: close` (uvicorn closes the connection after that response) and the client's next
request opens a new connection, which any worker may accept; if it lands on the busy worker again, that worker
sheds it again a little later. A reconnect on loopback costs ~0.1 ms.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from churnsense.files import atomic_write_text

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

IDLE_S = 1.0  # a connection not heard from for this long no longer counts as open
SYNC_S = 0.05  # how often a worker publishes its count and reads the others'
STALE_S = 3.0  # a count file older than this belongs to a worker that is gone
REFRESH_S = STALE_S / 3  # an unchanged count is written again this often, so it never looks stale
SHED_EVERY_S = 0.01  # at most one close per this interval per worker: counts lag behind by up to SYNC_S
FOLDER_PREFIX = "churnsense-connections-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class WorkerCounts:
    """Open-connection counts of one server's workers: one file per worker process in a shared folder."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._mine = self.folder / (name or str(os.getpid()))
        self._published: tuple[int, float] | None = None  # (count, time.time()) of the last write
        atexit.register(self.remove)

    @classmethod
    def for_server(cls) -> WorkerCounts:
        """The folder that the workers of this server (children of one `bentoml serve` process) share. Folders
        of servers that are gone (workers killed before they could clean up) are removed on the way."""
        root = Path(tempfile.gettempdir())
        for folder in root.glob(f"{FOLDER_PREFIX}*"):
            parent = folder.name.removeprefix(FOLDER_PREFIX)
            if parent.isdigit() and not _alive(int(parent)):
                shutil.rmtree(folder, ignore_errors=True)
        return cls(root / f"{FOLDER_PREFIX}{os.getppid()}")

    def publish(self, count: int) -> None:
        """Write this worker's count when it changed, or when its file is a third of the way to stale: every
        `SYNC_S` (20 times a second) a write cost ~1 ms on the event loop, between requests or inside them."""
        now = time.time()
        if (
            self._published is not None
            and self._published[0] == count
            and now - self._published[1] < REFRESH_S
        ):
            return
        atomic_write_text(str(count), self._mine)  # its temporary name has a suffix: all() skips it
        self._published = (count, now)

    def all(self) -> list[int]:
        """Every live worker's last published count (this worker's included)."""
        counts, now = [], time.time()
        for path in self.folder.iterdir():
            if path.suffix:
                continue
            with contextlib.suppress(OSError, ValueError):
                if now - path.stat().st_mtime < STALE_S:
                    counts.append(int(path.read_text()))
        return counts

    def remove(self) -> None:
        """Withdraw this worker's count (at exit); the last worker out removes the folder."""
        self._published = None
        with contextlib.suppress(OSError):
            self._mine.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()


class BalanceConnections:
    """ASGI middleware: `Connection: close` on a response when this worker holds more than its fair share of
    open connections. `exclude_paths` are never closed (BentoML's own client calling back into the service).
    """

    def __init__(
        self,
        app: ASGIApp,
        enabled: bool = True,
        exclude_paths: tuple[str, ...] = (),
        counts: WorkerCounts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.exclude_paths = exclude_paths
        self.counts = counts  # default: the server's shared folder, found on the first request
        self.clock = clock
        self._seen: dict[tuple[str, int], float] = {}
        self._synced = self._shed = 0.0
        self._heartbeat: asyncio.Task[None] | None = None
        self._excess = 0
        self.closed = 0  # connections this worker asked to close (tests and debugging)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.enabled:
            await self._with_heartbeat(scope, receive, send)
            return
        client = scope.get("client")
        if (
            not self.enabled
            or scope["type"] != "http"
            or not client
            or scope.get("path") in self.exclude_paths
        ):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        key = (str(client[0]), int(client[1]))
        self._seen[key] = now
        if self._heartbeat is None and now - self._synced >= SYNC_S:
            self._sync(now)  # no lifespan events (tests, other servers): count on requests instead
        if self._excess <= 0 or now - self._shed < SHED_EVERY_S:
            await self.app(scope, receive, send)
            return
        self._excess -= 1
        self._shed = now
        self._seen.pop(key, None)
        self.closed += 1

        async def send_with_close(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_with_close)

    async def _with_heartbeat(self, scope: Scope, receive: Receive, send: Send) -> None:
        """For the worker's whole life, publish its count every SYNC_S, requests or not: a worker nobody has
        connected to yet must still count (as 0), or the others would see nobody to balance against."""

        async def beat() -> None:
            while True:
                self._sync(self.clock())
                await asyncio.sleep(SYNC_S)

        self._heartbeat = asyncio.create_task(beat())
        try:
            await self.app(scope, receive, send)
        finally:
            self._heartbeat.cancel()
            if self.counts is not None:
                self.counts.remove()

    def _sync(self, now: float) -> None:
        """Forget idle connections, publish this worker's count, and work out how many it holds too many."""
        self._synced = now
        self._seen = {key: seen for key, seen in self._seen.items() if now - seen < IDLE_S}
        mine = len(self._seen)
        try:
            if self.counts is None:
                self.counts = WorkerCounts.for_server()
            self.counts.publish(mine)
            counts = self.counts.all()
        except OSError:  # no shared folder (read-only temp dir): nothing to balance against
            self._excess = 0
            return
        workers = max(1, len(counts))
        self._excess = mine - math.ceil(sum(counts) / workers) if workers > 1 else 0
