"""CPU thread limits for the service's worker threads.

On a small machine, many OpenMP threads make tree scoring (LightGBM, scikit-learn) several times *slower* per
row, and torch's intra-op pool fights the feature code for the same cores. Two facts shape this module:

- torch's thread count is process-wide: `torch.set_num_threads` once is enough.
- OpenMP's thread count is per calling thread (an ICV): a limit set in the main thread does not reach the
  threads that BentoML and anyio run endpoints in. So every worker thread applies the limit itself, once.
"""

from __future__ import annotations

import contextlib
import logging
import threading

logger = logging.getLogger(__name__)

_state = threading.local()


def limit_torch_threads(threads: int) -> None:
    """Process-wide torch intra-op threads (and a single inter-op thread)."""
    import torch

    torch.set_num_threads(threads)
    # Only settable before the first parallel op; a later call raises, and the first setting stands.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def limit_this_thread(threads: int) -> None:
    """OpenMP and BLAS threads of the calling thread, applied once per thread (cheap on later calls)."""
    if getattr(_state, "threads", None) == threads:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="openmp")
    threadpool_limits(limits=threads, user_api="blas")
    _state.threads = threads
    logger.debug("thread %s: OpenMP/BLAS limited to %d", threading.current_thread().name, threads)
