"""The scoring child's boundary: rows and anomalies as named columns, decoded by name, with a version check."""

from __future__ import annotations

import pickle
from dataclasses import fields, replace

import pytest

from model.schema import (
    ANOMALY_COLUMNS,
    BOUNDARY_VERSION,
    ROW_COLUMNS,
    Anomaly,
    BoundaryError,
    Row,
    anomalies_from_columns,
    anomalies_to_columns,
    check_boundary_version,
    rows_from_columns,
    rows_to_columns,
)

T0 = 1_762_041_600_000_000_000


def rows(n: int = 6) -> list[Row]:
    """Rows of every signal, every field set to a value that differs from its default."""
    signals = ("logs", "traces", "metrics")
    return [
        Row(
            uid=f"u{i}",
            signal=signals[i % 3],
            time_unix_nano=T0 + i,
            service=f"svc{i % 2}",
            class_uid=4002 + i,
            activity_id=i + 1,
            severity_id=i + 2,
            status_id=i % 3,
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
            fields={"message": f"m{i}", "duration": 1.5 * i, "http_response.code": 200 + i, "ok": i % 2 == 0},
            resource={"service.name": f"svc{i % 2}"},
        )
        for i in range(n)
    ]


def anomaly(row: Row, i: int) -> Anomaly:
    return Anomaly(
        row,
        score=60.0 + i,
        raw_score=1.25 * i,
        threshold=50.0,
        detector="knn-embedding",
        model_version="v1-abc",
        explanation=f"Unusual span {i}.",
        neighbors=(f"n{i}", "n9"),
        evidence=(("duration", str(i), "12"),),
        detected_unix_nano=T0 + 100 + i,
    )


def roundtrip(cols: dict) -> dict:
    return pickle.loads(pickle.dumps(cols))


def test_rows_round_trip_keeps_every_field_but_the_resource():
    sent = rows()
    got = rows_from_columns(roundtrip(rows_to_columns(sent)))
    assert got == [replace(r, resource={}) for r in sent]  # resource stays with the sender's row
    assert set(ROW_COLUMNS) == {f.name for f in fields(Row)} - {"resource"}


def test_rows_to_columns_writes_exactly_the_row_columns():
    # rows_to_columns spells the columns out; a field added to Row must be added there too
    assert tuple(rows_to_columns(rows(2))) == ROW_COLUMNS
    assert rows_to_columns([]) == {name: [] for name in ROW_COLUMNS}
    assert rows_from_columns(rows_to_columns([])) == []


def test_anomalies_round_trip_keep_every_field_and_the_receivers_row():
    batch = rows()
    sent = [anomaly(batch[i], i) for i in (1, 4)]
    got = anomalies_from_columns(roundtrip(anomalies_to_columns(sent, [1, 4])), batch)
    assert got == sent
    assert got[0].row is batch[1] and got[1].row is batch[4]  # resource included: the event needs it
    assert set(anomalies_to_columns(sent, [1, 4])) == set(ANOMALY_COLUMNS)
    assert anomalies_from_columns(anomalies_to_columns([], []), batch) == []


def test_an_unknown_extra_column_is_ignored():
    """A sender with a newer Row (one more field, anywhere in the order) decodes to the same rows."""
    sent = rows()
    cols = rows_to_columns(sent)
    newer = {"uid": cols["uid"], "priority": [7] * len(sent), **cols}
    assert rows_from_columns(newer) == rows_from_columns(cols)
    extra = anomalies_to_columns([anomaly(sent[0], 0)], [0]) | {"confidence": [0.9]}
    assert anomalies_from_columns(extra, sent)[0] == anomaly(sent[0], 0)


def test_a_missing_optional_column_gets_its_default_and_shifts_nothing():
    sent = rows()
    cols = rows_to_columns(sent)
    older = {k: v for k, v in cols.items() if k not in ("trace_id", "fields")}
    got = rows_from_columns(older)
    assert [r.trace_id for r in got] == [""] * len(sent)
    assert [r.fields for r in got] == [{}] * len(sent)
    assert got[0].fields is not got[1].fields  # a fresh default per row, not one shared dict
    assert [r.span_id for r in got] == [r.span_id for r in sent]  # the field after a missing one is intact
    assert [replace(r, trace_id="", fields={}, resource={}) for r in sent] == got


def test_a_missing_required_column_is_an_error_naming_it():
    cols = rows_to_columns(rows())
    del cols["time_unix_nano"]
    with pytest.raises(BoundaryError, match="'time_unix_nano'"):
        rows_from_columns(cols)
    found = anomalies_to_columns([anomaly(rows()[0], 0)], [0])
    del found["explanation"]
    with pytest.raises(BoundaryError, match="'explanation'"):
        anomalies_from_columns(found, rows())
    del found["row"]
    with pytest.raises(BoundaryError, match="'row'"):
        anomalies_from_columns(found, rows())


def test_columns_of_unequal_length_are_an_error():
    cols = rows_to_columns(rows(3))
    cols["service"] = cols["service"][:2]
    with pytest.raises(BoundaryError, match="differ in length"):
        rows_from_columns(cols)


@pytest.mark.parametrize("other", [BOUNDARY_VERSION + 1, BOUNDARY_VERSION - 1, None, str(BOUNDARY_VERSION)])
def test_another_boundary_version_fails_clearly(other):
    with pytest.raises(
        BoundaryError, match=rf"boundary version mismatch: this process speaks {BOUNDARY_VERSION}"
    ):
        check_boundary_version(other)
    check_boundary_version(BOUNDARY_VERSION)


def test_columns_pickle_no_larger_than_tuples():
    """The payload of 4,096 rows stays within 5% of the positional tuples it replaced."""
    batch = [
        replace(r, uid=f"row-{i}", fields={**r.fields, "message": f"GET /items/{i} served in {i % 50} ms"})
        for i, r in enumerate(rows(6) * 683)
    ][:4096]
    tuples = [
        (
            r.uid,
            r.signal,
            r.time_unix_nano,
            r.service,
            r.class_uid,
            r.activity_id,
            r.severity_id,
            r.status_id,
            r.fields,
            r.trace_id,
            r.span_id,
        )
        for r in batch
    ]
    assert len(pickle.dumps(rows_to_columns(batch))) <= 1.05 * len(pickle.dumps(tuples))
