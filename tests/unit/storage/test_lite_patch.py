"""storage.lite_patch: the vectorised Milvus Lite flush builds exactly the table the original builds."""

from __future__ import annotations

import pyarrow as pa
import pytest

pytest.importorskip("milvus_lite.storage.memtable")

from milvus_lite.schema.arrow_builder import build_wal_data_schema  # noqa: E402
from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema  # noqa: E402
from milvus_lite.storage.memtable import MemTable  # noqa: E402

from storage import lite_patch  # noqa: E402


def _schema() -> CollectionSchema:
    return CollectionSchema(
        fields=[
            FieldSchema("uid", DataType.VARCHAR, is_primary=True, max_length=64),
            FieldSchema("service", DataType.VARCHAR, max_length=256),
            FieldSchema("time_ms", DataType.INT64),
            FieldSchema("score", DataType.FLOAT),
            FieldSchema("is_anomaly", DataType.BOOL),
            FieldSchema("row", DataType.VARCHAR, max_length=16384),
            FieldSchema("embedding", DataType.FLOAT_VECTOR, dim=4),
        ]
    )


def _batch(
    schema: CollectionSchema, uids: list[str], seq0: int, partition: str = "_default"
) -> pa.RecordBatch:
    n = len(uids)
    return pa.RecordBatch.from_pydict(
        {
            "_seq": list(range(seq0, seq0 + n)),
            "_partition": [partition] * n,
            "uid": uids,
            "service": [f"svc{i % 3}" for i in range(n)],
            "time_ms": [seq0 * 1000 + i for i in range(n)],
            "score": [i / 7 for i in range(n)],
            "is_anomaly": [i % 5 == 0 for i in range(n)],
            "row": [f'{{"i":{seq0 + i}}}' for i in range(n)],
            "embedding": [[float(seq0 + i), 1.0, 0.5, -1.0] for i in range(n)],
        },
        schema=build_wal_data_schema(schema),
    )


def test_vectorised_flush_equals_original() -> None:
    assert lite_patch.apply()
    assert lite_patch.apply()  # idempotent
    patched = MemTable._build_data_table
    original = patched.__wrapped__
    schema = _schema()
    mem = MemTable(schema)
    mem.apply_insert(_batch(schema, [f"u{i}" for i in range(50)], 0))
    mem.apply_insert(_batch(schema, [f"u{i}" for i in range(30, 80)], 100))  # u30..u49 replayed: newer wins
    mem.apply_insert(_batch(schema, [f"p{i}" for i in range(10)], 200, partition="other"))
    flushed = mem.flush(known_partitions=["_default", "other"])
    assert set(flushed) == {"_default", "other"}
    default_table = flushed["_default"][0]
    assert default_table.num_rows == 80
    rows = [(b, r) for b, r, _ in mem._pk_index.values()]
    assert patched(mem, rows).equals(original(mem, rows))
    assert patched(mem, rows[::-3]).equals(original(mem, rows[::-3]))
    assert patched(mem, []).equals(original(mem, []))
    by_uid = dict(
        zip(default_table.column("uid").to_pylist(), default_table.column("_seq").to_pylist(), strict=True)
    )
    assert by_uid["u30"] == 100 and by_uid["u0"] == 0  # the replayed row is the newer one
