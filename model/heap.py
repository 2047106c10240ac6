"""Keep the cyclic garbage collector's pauses off the request path.

A serving process holds hundreds of thousands of long-lived objects (modules, the model, the mapper's state)
that CPython's full collections walk and never free, holding the GIL while Export calls wait. `gc.freeze()`
moves the objects alive now out of the collector's view (reference counting still frees them), and a larger
young-generation threshold keeps rows in flight from being promoted into the old generation. The docs'
section "Heap settling (GC)" has the measurements.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)

GEN0_THRESHOLD = 20_000  # CPython's default is 700; a young collection of 20k containers takes ~0.4 ms


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
