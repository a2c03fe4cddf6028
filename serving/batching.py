"""Coalesce concurrent calls into one batch call, in process, with no timer.

Why not only BentoML's adaptive batching: a batchable BentoML API is reached over HTTP, so an endpoint that
wants its work batched pays a second request per call (serialise the input again, the whole middleware stack
again, a dispatcher that polls every millisecond). Measured on the 2-core machine, /sentiment through that hop
served about half the requests/s of the same model batched here (benchmarks/serving.py prints both). The
churn work is CPU-bound pandas and scikit-learn whose cost is mostly per *call*, not per customer, so it too
gains from batching only without the hop.

The policy is the simplest one that adapts to load: while a batch is being computed, new items queue; when it
finishes, everything queued (up to `max_batch` units) becomes the next batch. A lone request is computed at
once (churn waits `settle_s`, a millisecond, only when another request is on its way), and under load batches
grow to arrival rate x compute time. An item that has waited longer than `max_latency_s` when its batch would
start is answered 503, as BentoML's dispatcher does, so an overloaded worker sheds load instead of queueing
without bound.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`await batcher.submit(item)` -> the result of `compute([..., item, ...])` for that item.

    Args:
        compute: items -> one result per item, in order (an `Exception` in place of a result is raised to that
            item's caller only). Runs in a worker thread, one batch at a time.
        max_batch: most units per call (an item larger than this still runs, alone).
        size: units in one item (default 1; e.g. `len` for lists of texts).
        max_latency_s: items that waited longer than this before their batch starts get `overloaded()`.
        overloaded: the exception for shed items (the service passes a 503).
        in_thread: run `compute` in a worker thread (right for torch, which releases the GIL, so the event loop
            keeps parsing requests meanwhile). False runs it on the event loop: for pandas/scikit-learn work,
            which holds the GIL, a thread only makes the loop and the batch take turns, and batches stay small.
        settle_s: before each batch, let the event loop run this long (and then until the queue stops
            growing), so requests that arrived during the last batch join the next one.
        settle_if: whether settling can gather anything now (default: always). The service settles only when
            another churn request is inside the worker (`serving.guard.inside`): a lone client's request has
            no company to wait for, and the millisecond was a fifth of its latency.
    """

    def __init__(
        self,
        compute: Callable[[list[T]], Sequence[R | Exception]],
        max_batch: int,
        *,
        size: Callable[[T], int] = lambda _: 1,
        max_latency_s: float = float("inf"),
        overloaded: Callable[[], Exception] = lambda: RuntimeError("overloaded"),
        in_thread: bool = True,
        settle_s: float = 0.0,
        settle_if: Callable[[], bool] = lambda: True,
    ) -> None:
        self.compute = compute
        self.max_batch = max_batch
        self.size = size
        self.max_latency_s = max_latency_s
        self.overloaded = overloaded
        self.in_thread = in_thread
        self.settle_s = settle_s
        self.settle_if = settle_if
        self._queue: collections.deque[tuple[T, asyncio.Future[R], float]] = collections.deque()
        self._running = False
        self._limiter = anyio.CapacityLimiter(1)
        self.batches = 0
        self.items = 0
        self.shed = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future, time.monotonic()))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R], float]]:
        now = time.monotonic()
        batch: list[tuple[T, asyncio.Future[R], float]] = []
        units = 0
        while self._queue:
            item, future, queued_at = self._queue[0]
            if future.cancelled():  # the client went away
                self._queue.popleft()
                continue
            if now - queued_at > self.max_latency_s:
                self._queue.popleft()
                future.set_exception(self.overloaded())
                self.shed += 1
                continue
            units_here = self.size(item)
            if batch and units + units_here > self.max_batch:
                break
            self._queue.popleft()
            batch.append((item, future, queued_at))
            units += units_here
        return batch

    async def _settle(self) -> None:
        """Requests that arrived while the last batch ran still sit in socket buffers, unparsed: give the loop
        `settle_s`, then more turns until the queue has stopped growing for two of them."""
        await asyncio.sleep(self.settle_s)
        quiet = 0
        for _ in range(16):
            before = len(self._queue)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == before else 0
            if quiet >= 2:
                return

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.settle_s > 0 and self.settle_if():
                    await self._settle()
                elif self.settle_s > 0:  # on the loop: still one turn between batches for other endpoints
                    await asyncio.sleep(0)
                batch = self._next_batch()
                if not batch:
                    continue
                items = [item for item, _, _ in batch]
                try:
                    if self.in_thread:
                        results = await anyio.to_thread.run_sync(self.compute, items, limiter=self._limiter)
                    else:
                        results = self.compute(items)
                    if len(results) != len(items):
                        raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
                except Exception as error:  # the whole batch failed: every caller gets the error
                    results = [error] * len(items)
                self.batches += 1
                self.items += len(items)
                for (_, future, _), result in zip(batch, results, strict=True):
                    if future.cancelled():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = False
