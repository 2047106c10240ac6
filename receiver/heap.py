"""Keep the cyclic garbage collector's pauses off the request path.

A serving process holds ~600k long-lived objects (torch, grpc, pymilvus, numpy modules; the model; the mapper's
state). CPython's full (generation 2) collection walks all of them and found nothing to free, taking 250-280 ms
each time while every Export call waited for the GIL (measured on the paced benchmark: those pauses were the
Export p99). `gc.freeze()` moves the objects alive at that point out of the collector's view: they are still
freed by reference counting, only cycles among them would stay, and full collections then walk only what was
allocated since.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def settle_heap(collect: bool = False) -> int:
    """Freeze every object alive now (after a `gc.collect()` with collect=True); returns the frozen count."""
    start = time.perf_counter()
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("gc: %d objects frozen (%.0f ms)", frozen, (time.perf_counter() - start) * 1000)
    return frozen
