"""A faster MemTable flush for Milvus Lite (the pure-Python engine, milvus-lite 3.x).

Milvus Lite builds each flushed segment row by row: for every live row and every column it takes one
pyarrow scalar and converts it to a Python object (``MemTable._build_data_table``), then rebuilds the
table from those lists. With otad's rows schema that loop was about 40% of the Lite server's CPU per
stored row (py-spy, benchmarks/bench_milvus_write.py). ``apply()`` swaps in the same result computed with
one ``Table.take`` over the memtable's batches: same rows, same order, same schema.

The replacement checks its own preconditions on every call and falls back to the original method when the
memtable does not look as expected (another milvus-lite version), so it can only make the flush faster,
never different. ``apply()`` is idempotent; the Lite server child (storage/lite_server.py) and embedded
Lite (MilvusStore on a ``.db`` path) both call it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_applied = False


def apply() -> bool:
    """Install the vectorised flush into milvus_lite's MemTable; False when milvus_lite lacks it."""
    global _applied
    if _applied:
        return True
    try:
        import pyarrow as pa
        from milvus_lite.storage.memtable import MemTable
    except ImportError:
        return False
    original = getattr(MemTable, "_build_data_table", None)
    if original is None:
        return False

    def _build_data_table(self: Any, rows: list[tuple[int, int]]) -> Any:
        try:
            schema = self._data_schema
            batches = self._insert_batches
            if not rows:
                return original(self, rows)
            offsets = np.zeros(len(batches) + 1, dtype=np.int64)
            np.cumsum([b.num_rows for b in batches], out=offsets[1:])
            pos = np.asarray(rows, dtype=np.int64)
            take = offsets[pos[:, 0]] + pos[:, 1]
            table = pa.Table.from_batches([b.select(schema.names) for b in batches]).take(take)
            return table if table.schema.equals(schema) else table.cast(schema)
        except Exception:  # noqa: BLE001 - unexpected layout: the original, slow and correct
            logger.debug("vectorised Milvus Lite flush failed; using the original", exc_info=True)
            return original(self, rows)

    _build_data_table.__wrapped__ = original  # type: ignore[attr-defined]
    MemTable._build_data_table = _build_data_table
    _applied = True
    return True
