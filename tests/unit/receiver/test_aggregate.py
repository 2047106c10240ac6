"""Finding aggregation (receiver/aggregate.py): repeats of one pattern update one finding, bounded, nothing lost."""

from __future__ import annotations

import json

import pytest

from model.schema import Anomaly, Row
from receiver.aggregate import EventLimits, FindingAggregator, pattern_key
from receiver.events import build_event
from receiver.metrics import Metrics
from receiver.writer import Writer
from storage import StorageError

T0_MS = 1_762_041_600_000


def anomaly(
    i: int,
    t_s: float,
    *,
    service: str = "checkout",
    message: str = "payment 4411 declined for order 9",
    detector: str = "pattern+errors",
    status_id: int = 2,
) -> Anomaly:
    row = Row(
        uid=f"r{i}",
        signal="logs",
        time_unix_nano=int((T0_MS + t_s * 1000) * 1_000_000),
        service=service,
        class_uid=6003,
        activity_id=1,
        severity_id=4,
        status_id=status_id,
        fields={"message": message.replace("4411", str(4000 + i))},
    )
    return Anomaly(row, 80.0, 1e-5, 50.0, detector, "v1", "unusual", (), (), row.time_unix_nano)


def run(agg: FindingAggregator, anomalies: list[Anomaly]) -> list[dict]:
    """Feed one anomaly per batch, advancing the clock as the pipeline does; the sent findings' bodies."""
    sent = []
    for a in anomalies:
        _, send = agg.add([a])
        sent += send
        sent += agg.advance(a.row.time_ms)
    return [e.finding for e in sent]


def counting() -> tuple[dict[str, int], object]:
    counts: dict[str, int] = {}

    def on(outcome: str, n: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + n

    return counts, on


def test_the_pattern_is_service_signal_outcome_and_for_ok_records_the_detector_kind():
    failed = pattern_key(anomaly(1, 0, detector="pattern+knn"))
    assert failed == ("checkout", "logs", "failed", "")  # OCSF status 2: a failure, whichever member saw it
    assert pattern_key(anomaly(2, 5, message="card 77 declined", detector="errors")) == failed
    assert pattern_key(anomaly(1, 0, service="cart")) != failed
    ok = pattern_key(anomaly(1, 0, detector="knn+pattern", status_id=1))
    assert ok == ("checkout", "logs", "ok", "content")
    assert pattern_key(anomaly(1, 0, detector="isolation", status_id=1)) == ok  # content members are one kind
    assert pattern_key(anomaly(1, 0, detector="knn+latency", status_id=1))[3] == "latency"
    assert pattern_key(anomaly(1, 0, detector="series", status_id=1))[3] == "series"


def test_the_create_waits_for_the_first_repeats():
    agg = FindingAggregator(EventLimits(window_s=300, max_per_window=1, max_per_minute=100, wait_s=60), "t")
    sent = run(agg, [anomaly(i, i * 2.0) for i in range(60)])  # 60 anomalies over 2 minutes
    sent += [e.finding for e in agg.advance(T0_MS + 1000 * 1000)]
    assert [(f["activity_id"], f["count"]) for f in sent] == [(1, 31), (2, 60)]  # at 60 s, then the last word
    assert sent[0]["time"] == T0_MS + 60_000  # the event is about the latest record at the time


def test_repeats_within_the_window_update_one_finding():
    counts, on = counting()
    limits = EventLimits(window_s=300, max_per_window=3, max_per_minute=100, wait_s=0)
    agg = FindingAggregator(limits, "t", on)
    sent = run(agg, [anomaly(i, i * 2.0) for i in range(60)])  # 60 anomalies over 2 minutes
    sent += [e.finding for e in agg.advance(T0_MS + 1000 * 1000)]  # time passes: the finding closes
    assert [f["activity_id"] for f in sent] == [1, 2, 2]  # Create, one Update at >= 100 s, the closing Update
    assert len({f["finding_info"]["uid"] for f in sent}) == 1
    last = sent[-1]
    assert last["count"] == 60 and last["type_uid"] == 200402 and last["activity_name"] == "Update"
    assert last["finding_info"]["first_seen_time"] == T0_MS
    assert last["finding_info"]["last_seen_time"] == T0_MS + 118_000
    # Every source record is named by exactly one event of the finding.
    named = [r["uid"] for f in sent for r in f["finding_info"]["related_events"]]
    assert sorted(named) == sorted(f"r{i}" for i in range(60))
    assert counts == {"created": 1, "updated": 2, "aggregated": 59 - 1}
    assert agg.open_findings == 0


def test_a_long_incident_is_bounded_per_window():
    agg = FindingAggregator(EventLimits(window_s=60, max_per_window=2, max_per_minute=1000, wait_s=10), "t")
    sent = run(agg, [anomaly(i, i * 1.0) for i in range(600)])  # one every second for 10 minutes
    sent += [e.finding for e in agg.flush()]
    assert len({f["finding_info"]["uid"] for f in sent}) == 1
    assert len(sent) <= 2 * 10 + 1
    assert sent[-1]["count"] == 600


def test_after_a_quiet_window_the_same_pattern_is_a_new_finding():
    agg = FindingAggregator(EventLimits(window_s=60, max_per_window=3, max_per_minute=100, wait_s=0), "t")
    sent = run(agg, [anomaly(1, 0), anomaly(2, 1), anomaly(3, 500)])
    creates = [f for f in sent if f["activity_id"] == 1]
    assert len(creates) == 2 and creates[0]["finding_info"]["uid"] != creates[1]["finding_info"]["uid"]
    # the first finding's repeat was reported by its closing Update before the second began
    assert [f["count"] for f in sent] == [1, 2, 1]
    assert sent[2]["unmapped"]["anomaly.pattern.uid"] == sent[0]["unmapped"]["anomaly.pattern.uid"]


def test_the_global_rate_bound_holds_events_back_and_loses_no_finding():
    counts, on = counting()
    agg = FindingAggregator(EventLimits(window_s=30, max_per_window=3, max_per_minute=5, wait_s=0), "t", on)
    # 40 different patterns in the same second: only 5 events in that minute.
    burst = [anomaly(i, 0.5, service=f"svc-{i}") for i in range(40)]
    _, first = agg.add(burst)
    assert len(first) == 5 and counts["rate_limited"] >= 35
    sent = [e.finding for e in first]
    for minute in range(1, 12):  # later traffic moves the clock; held-back findings go out, 5 a minute
        sent += [e.finding for e in agg.advance(T0_MS + minute * 60_000)]
    services = {f["finding_info"]["related_events"][0]["uid"] for f in sent}
    assert services == {f"r{i}" for i in range(40)}  # every finding reported at least once
    assert agg.open_findings == 0


def test_window_zero_is_one_event_per_anomaly():
    agg = FindingAggregator(EventLimits(window_s=0), "t")
    stored, send = agg.add([anomaly(i, i) for i in range(5)])
    assert len(stored) == len(send) == 5 and all(f.finding["count"] == 1 for f in send)
    assert len({e.finding_uid for e in send}) == 5


def test_every_anomaly_is_stored_with_its_finding():
    agg = FindingAggregator(EventLimits(window_s=300), "t")
    stored, send = agg.add([anomaly(i, i) for i in range(10)])
    assert len(stored) == 10 and send == []  # the Create waits (60 s) for repeats
    send = agg.advance(T0_MS + 70_000)
    assert len(send) == 1 and send[0].count == 10
    assert {e.finding_uid for e in stored} == {send[0].finding_uid}
    assert [e.count for e in stored] == list(range(1, 11))
    assert len({e.uid for e in stored}) == 10  # the stored records keep their own uid


def test_the_update_event_carries_the_finding_on_the_wire():
    agg = FindingAggregator(EventLimits(window_s=300, max_per_window=3, wait_s=0), "t")
    _, send = agg.add([anomaly(i, i * 60.0) for i in range(3)])
    _, record = build_event(send[-1])
    attrs = {kv.key: kv.value for kv in record.attributes}
    body = json.loads(record.body.string_value)
    assert record.event_name == "otad.anomaly" and "event.name" not in attrs
    assert attrs["anomaly.finding.uid"].string_value == body["finding_info"]["uid"]
    assert attrs["anomaly.finding.count"].int_value == body["count"] == 3
    assert body["activity_id"] == 2 and body["status"] == "In Progress"


@pytest.mark.parametrize(
    "bad", [dict(window_s=-1), dict(max_per_window=0), dict(max_per_minute=0), dict(wait_s=-1)]
)
def test_limits_are_checked(bad):
    with pytest.raises(ValueError):
        EventLimits(**bad)


def test_waits_and_quiet_windows_end_by_the_wall_clock_when_no_later_record_comes():
    import time

    agg = FindingAggregator(EventLimits(window_s=0.4, max_per_window=1, max_per_minute=100, wait_s=0.1), "t")
    _, send = agg.add([anomaly(1, 0), anomaly(2, 0.01)])  # the records' clock does not move past the wait
    assert send == [] and agg.tick() == []
    time.sleep(0.15)
    created = agg.tick()
    assert [(e.finding["activity_id"], e.count) for e in created] == [(1, 2)]
    agg.add([anomaly(3, 0.02)])
    time.sleep(0.45)
    closing = agg.tick()  # quiet for a window by the wall clock: the last word, and the finding ends
    assert [(e.finding["activity_id"], e.count) for e in closing] == [(2, 3)] and agg.open_findings == 0


@pytest.mark.parametrize("window_s", [300.0, 0.0])
def test_anomalies_folded_again_after_a_failed_store_count_once_and_are_not_sent_again(window_s):
    agg = FindingAggregator(
        EventLimits(window_s=window_s, max_per_window=1, max_per_minute=100, wait_s=0), "t"
    )
    batch = [anomaly(i, i) for i in range(3)]
    stored, send = agg.add(batch)
    again, resend = agg.add(batch)  # the same batch, re-scored after its store failed
    assert [(e.uid, e.finding) for e in again] == [(e.uid, e.finding) for e in stored]
    assert resend == [] and len(send) >= 1
    later, _ = agg.add([anomaly(3, 3)])
    assert later[0].finding["count"] == (4 if window_s else 1)  # not 7: the retried three counted once


class _FlakyStore:
    """Milvus stand-in (the outage is what is tested): the first anomaly write fails as an outage."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.fail = 1

    def existing_anomaly_uids(self, uids: list[str]) -> set[str]:
        return {u for u in uids if u in self.rows}

    def upsert_anomalies(self, records: list[dict]) -> int:
        if self.fail:
            self.fail -= 1
            raise StorageError("milvus unreachable")
        self.rows.update({r["uid"]: r for r in records})
        return len(records)


class _Emitter:
    def __init__(self) -> None:
        self.aggregator = FindingAggregator(EventLimits(window_s=300, max_per_minute=100, wait_s=0), "t")
        self.sent: list = []

    def emit(self, events) -> None:
        self.sent += events


def test_a_store_outage_neither_loses_the_finding_event_nor_counts_its_anomalies_twice(tmp_path):
    metrics, store, emitter = Metrics(), _FlakyStore(), _Emitter()
    writer = Writer(store, metrics, tmp_path, dead_letter_max_bytes=1 << 20, otad_version="t")  # type: ignore[arg-type]
    batch = [anomaly(i, i) for i in range(3)]
    with pytest.raises(StorageError):
        writer.anomalies(batch, emitter)  # type: ignore[arg-type]
    assert [e.finding["activity_name"] for e in emitter.sent] == ["Create"]  # sent although the store failed
    assert writer.anomalies(batch, emitter) == 3  # the pipeline's retry of the re-scored batch
    assert len(emitter.sent) == 1  # not sent again
    assert sorted(r["event"]["finding"]["count"] for r in store.rows.values()) == [1, 2, 3]
    assert metrics.anomalies.labels("logs")._value.get() == 3
