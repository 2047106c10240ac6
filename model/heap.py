"""Keep the cyclic garbage collector's pauses off the request path.

A serving process holds ~600k long-lived objects (torch, grpc, pymilvus, numpy modules; the model; the mapper's
state). CPython's full (generation 2) collection walks all of them and found nothing to free, taking 250-280 ms
each time while every Export call waited for the GIL (measured on the paced benchmark: those pauses were the
Export p99). `gc.freeze()` moves the objects alive at that point out of the collector's view: they are still
freed by reference counting, only cycles among them would stay, and full collections then walk only what was
allocated since.

The youngest generation is collected every GEN0_THRESHOLD allocations instead of CPython's 700: at 700, rows
still in flight (alive for a batch, ~200 ms) survive young collections and are promoted into the old
generation, which the full collections then walk (`make bench`, paced 5,000/s, Export p99 over two runs each:
33.8 / 47.7 ms at 700, 32.5 / 36.5 ms at 20,000; a young collection of 20k containers takes 0.4 ms).
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)

GEN0_THRESHOLD = 20_000


def settle_heap(collect: bool = False) -> int:
    """Freeze every object alive now (after a `gc.collect()` with collect=True); returns the frozen count."""
    start = time.perf_counter()
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 10)
    frozen = gc.get_freeze_count()
    logger.debug("gc: %d objects frozen (%.0f ms)", frozen, (time.perf_counter() - start) * 1000)
    return frozen
