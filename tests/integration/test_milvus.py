"""The Milvus store against real Milvus Lite (embedded, and as a `milvus_lite server` process): a hard dependency."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient, MilvusException

from storage import MilvusStore, StorageError
from storage.collection import render_filter, rows_collection_name
from tests.helpers import free_port

pytestmark = pytest.mark.integration

DIM = 8
TRICKY = 'o\'brien "x"'  # breaks any filter built by pasting the value between quotes


@pytest.fixture
def store(tmp_path: Path):
    s = MilvusStore(str(tmp_path / "data" / "milvus.db"), timeout_s=10)
    yield s
    s.close()


def backlog_row(i: int, service: str = "checkout") -> dict:
    return {
        "uid": f"b{i}",
        "signal": "logs",
        "service": service,
        "class_uid": 1007,
        "time_ms": 1_000 + i,
        "trace_id": f"{i:032x}",
        "row": {"message": f"msg {i}", "nested": {"n": i}},
    }


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def embedded_rows(version: str, vecs: np.ndarray, prefix: str = "r", services=("a", TRICKY)) -> list[dict]:
    return [
        {
            "uid": f"{prefix}{i}",
            "signal": "traces",
            "service": services[i % len(services)],
            "class_uid": 6003,
            "time_ms": i,
            "trace_id": "",
            "model_version": version,
            "score": float(i),
            "is_anomaly": i % 5 == 0,
            "is_reference": i % 2 == 0,
            "row": {"i": i},
            "embedding": v,
        }
        for i, v in enumerate(vecs)
    ]


def anomaly(i: int, detected_ms: int, service: str = "checkout", score: float = 50.0) -> dict:
    return {
        "uid": f"f{i}",
        "source_uid": f"r{i}",
        "signal": "logs",
        "service": service,
        "class_uid": 2004,
        "time_ms": detected_ms - 5,
        "detected_ms": detected_ms,
        "score": score,
        "threshold": 40.0,
        "model_version": "v1",
        "explanation": "rare template for this service",
        "event": {"id": i},
    }


def test_backlog_round_trip_without_duplicates(store: MilvusStore):
    rows = [backlog_row(i) for i in range(25)]
    assert store.upsert_backlog([]) == 0
    assert store.upsert_backlog(rows) == 25
    assert store.upsert_backlog(rows) == 25  # a replay overwrites by uid
    assert store.count_backlog() == 25
    pages = list(store.iter_backlog(batch=10))
    assert all(len(p) <= 10 for p in pages)
    got = {r["uid"]: r for p in pages for r in p}
    assert got.keys() == {r["uid"] for r in rows}
    assert got["b7"] == rows[7]  # JSON row and every scalar survive the trip
    newer = [r["uid"] for p in store.iter_backlog(after_time_ms=1_019) for r in p]
    assert sorted(newer) == [f"b{i}" for i in range(20, 25)]


def test_lite_file_persists_across_reopen(tmp_path: Path):
    uri = str(tmp_path / "deep" / "dir" / "otad.db")  # parent directories are created
    s = MilvusStore(uri, timeout_s=10)
    s.upsert_backlog([backlog_row(i) for i in range(3)])
    s.close()
    s.close()  # safe twice
    with pytest.raises(StorageError, match="closed"):
        s.count_backlog()
    assert s.ping() is False
    again = MilvusStore(uri, timeout_s=10)
    try:
        assert again.ping() is True
        assert again.count_backlog() == 3
    finally:
        again.close()


def test_lite_path_must_end_in_db(tmp_path: Path):
    with pytest.raises(StorageError, match=r"\.db"):
        MilvusStore(str(tmp_path / "milvus"))


def test_rows_collection_is_idempotent_and_keeps_its_dim(store: MilvusStore):
    name = store.ensure_rows_collection("2026.11.22-a", DIM)
    assert name == rows_collection_name("2026.11.22-a")
    assert name.startswith("otad_rows_2026_11_22_a")
    assert store.ensure_rows_collection("2026.11.22-a", DIM) == name
    assert rows_collection_name("v1.0") != rows_collection_name("v1_0")  # sanitising never merges versions
    with pytest.raises(StorageError, match="8-d"):
        store.ensure_rows_collection("2026.11.22-a", 16)


def test_search_returns_self_first_as_cosine_distance(store: MilvusStore, tmp_path: Path):
    vecs = vectors(200)
    store.ensure_rows_collection("v1", DIM)
    assert store.upsert_rows("v1", []) == 0
    assert store.upsert_rows("v1", embedded_rows("v1", vecs)) == 200
    assert store.upsert_rows("v1", embedded_rows("v1", vecs)) == 200
    assert store.count_rows("v1") == 200

    hits = store.search("v1", vecs[:5], k=3, output_fields=["service", "score"])
    for i, per_query in enumerate(hits):
        assert per_query[0]["uid"] == f"r{i}"
        assert per_query[0]["distance"] == pytest.approx(0.0, abs=1e-5)  # 1 - cosine similarity
        assert [h["distance"] for h in per_query] == sorted(h["distance"] for h in per_query)
        assert set(per_query[0]) == {"uid", "distance", "service", "score"}
    sim = vecs[0] @ vecs[1] / np.linalg.norm(vecs[0]) / np.linalg.norm(vecs[1])
    only = store.search("v1", vecs[0], k=1, filter="uid == {u}", filter_params={"u": "r1"})
    assert only[0][0]["distance"] == pytest.approx(1.0 - sim, abs=1e-5)

    # pymilvus itself returns the cosine *similarity* (self = 1.0, higher = closer); the store flips it.
    raw = MilvusClient(str(tmp_path / "data" / "milvus.db"))
    try:
        res = raw.search(rows_collection_name("v1"), data=[vecs[0].tolist()], limit=1, timeout=10)
        assert res[0][0]["distance"] == pytest.approx(1.0, abs=1e-5)
    finally:
        raw.close()

    many = store.search("v1", np.repeat(vecs[:1], 1030, axis=0), k=2)  # two search calls of <= 1024
    assert len(many) == 1030 and all(h[0]["uid"] == "r0" for h in many)


def test_model_versions_never_meet(store: MilvusStore):
    a, b = vectors(30, seed=1), vectors(30, seed=2)
    assert store.ensure_rows_collection("v1", DIM) != store.ensure_rows_collection("v2", DIM)
    store.upsert_rows("v1", embedded_rows("v1", a, prefix="one-"))
    store.upsert_rows("v2", embedded_rows("v2", b, prefix="two-"))
    for hits in store.search("v1", b, k=10):  # v2's own vectors, searched in v1
        assert all(h["uid"].startswith("one-") for h in hits)
    assert store.count_rows("v1") == store.count_rows("v2") == 30
    with pytest.raises(StorageError, match="not 'v1'"):
        store.upsert_rows("v1", embedded_rows("v2", b[:1]))
    store.drop_rows_collection("v2")
    store.drop_rows_collection("v2")  # idempotent
    assert store.count_rows("v1") == 30
    with pytest.raises(StorageError, match="ensure_rows_collection"):
        store.search("v2", b, k=1)


def test_filters_are_templates_even_for_quotes(store: MilvusStore):
    store.ensure_rows_collection("v1", DIM)
    store.upsert_rows("v1", embedded_rows("v1", vectors(40)))
    got = store.query_rows("v1", "service == {svc}", {"svc": TRICKY}, limit=100)
    assert len(got) == 20 and {r["service"] for r in got} == {TRICKY}
    assert set(got[0]) >= {"uid", "row", "score", "is_reference", "model_version"}
    assert "embedding" not in got[0]
    hostile = store.query_rows("v1", "service == {svc}", {"svc": '" or uid != "'}, limit=100)
    assert hostile == []  # the value stays one string literal; it cannot widen the filter
    hits = store.search(
        "v1",
        vectors(40)[:1],
        k=40,
        filter="service == {svc} and is_anomaly == {flag}",
        filter_params={"svc": TRICKY, "flag": True},
        output_fields=["service", "is_anomaly"],
    )
    assert sorted(h["uid"] for h in hits[0]) == ["r15", "r25", "r35", "r5"]
    assert len(store.query_rows("v1", "time_ms in {ids}", {"ids": [1, 2, 3]})) == 3


def test_render_filter_quotes_values_and_needs_every_param():
    assert render_filter("a == {v} and b > {n}", {"v": TRICKY, "n": 2}) == 'a == "o\'brien \\"x\\"" and b > 2'
    assert render_filter('a == "{v}"', {}) == 'a == "{v}"'  # braces inside a literal are left alone
    with pytest.raises(StorageError, match="no 'v'"):
        render_filter("a == {v}", {})
    with pytest.raises(StorageError, match="finite"):
        render_filter("a > {x}", {"x": float("nan")})


def test_latest_anomalies_newest_first_with_filters(store: MilvusStore):
    now = int(time.time() * 1000)
    day = 86_400_000
    events = [
        anomaly(i, now - i * 3_600_000, service="pay" if i % 3 == 0 else TRICKY, score=float(i))
        for i in range(60)
    ]  # one an hour, 2.5 days back
    events.append(anomaly(999, now - 40 * day))  # long ago: found only when the window grows that far
    assert store.upsert_anomalies([]) == 0
    assert store.upsert_anomalies(events) == 61
    assert store.upsert_anomalies(events) == 61
    assert store.count_anomalies() == 61

    latest = store.latest_anomalies(limit=5)
    assert [e["uid"] for e in latest] == ["f0", "f1", "f2", "f3", "f4"]
    assert latest[0]["event"] == {"id": 0} and latest[0]["explanation"] == "rare template for this service"
    assert [e["uid"] for e in store.latest_anomalies(3, service="pay")] == ["f0", "f3", "f6"]
    assert [e["uid"] for e in store.latest_anomalies(2, service=TRICKY, min_score=10)] == ["f10", "f11"]
    assert len(store.latest_anomalies(100, since_ms=now - day + 1)) == 24
    everything = store.latest_anomalies(1000)
    assert len(everything) == 61 and everything[-1]["uid"] == "f999"
    assert [e["detected_ms"] for e in everything] == sorted(
        (e["detected_ms"] for e in everything), reverse=True
    )


def test_milvus_failures_become_storage_errors(store: MilvusStore):
    store.ensure_rows_collection("v1", DIM)
    bad = embedded_rows("v1", np.ones((1, DIM + 1), dtype=np.float32))  # wrong dim
    with pytest.raises(StorageError) as info:
        store.upsert_rows("v1", bad)
    assert not isinstance(info.value, MilvusException)
    assert isinstance(info.value.__cause__, MilvusException)
    with pytest.raises(StorageError):
        store.query_rows("v1", "no_such_field == {x}", {"x": 1})


def test_unreachable_server_is_a_storage_error():
    started = time.monotonic()
    with pytest.raises(StorageError, match="127.0.0.1:1"):
        MilvusStore("http://127.0.0.1:1", timeout_s=2)
    assert time.monotonic() - started < 10


def test_worker_thread_and_main_thread_share_the_store(store: MilvusStore):
    store.ensure_rows_collection("v1", DIM)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(0, 400, 50):
                store.upsert_rows("v1", embedded_rows("v1", vectors(50, seed=start), prefix=f"w{start}-"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        store.upsert_backlog([backlog_row(i) for i in range(20)])
        store.search("v1", vectors(4), k=5) if store.count_rows("v1") else None
    thread.join()
    assert errors == []
    assert store.count_rows("v1") == 400


def test_round_trip_through_a_milvus_lite_server_process(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(tmp_path / "server-data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until it answers
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                store = MilvusStore(f"http://127.0.0.1:{port}", timeout_s=5)
                break
            except StorageError:
                assert time.monotonic() < deadline, "milvus_lite server did not answer within 30 s"
                time.sleep(0.2)
        try:
            assert store.ping()
            vecs = vectors(10)
            store.ensure_rows_collection("v1", DIM)
            assert store.upsert_rows("v1", embedded_rows("v1", vecs)) == 10
            assert store.search("v1", vecs[3], k=1)[0][0]["uid"] == "r3"
            assert len(store.query_rows("v1", "service == {s}", {"s": TRICKY})) == 5
            store.upsert_anomalies([anomaly(1, int(time.time() * 1000))])
            assert [e["uid"] for e in store.latest_anomalies()] == ["f1"]
        finally:
            store.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_rows_written_by_an_earlier_run_are_searchable(tmp_path: Path):
    uri = str(tmp_path / "milvus.db")
    first = MilvusStore(uri, timeout_s=10)
    first.ensure_rows_collection("v1", DIM)
    first.upsert_rows("v1", embedded_rows("v1", vectors(5)))
    first.close()
    second = MilvusStore(uri, timeout_s=10)  # the collection is released in a new process; the store loads it
    try:
        assert second.search("v1", vectors(5)[2], k=1)[0][0]["uid"] == "r2"
        assert second.count_rows("v1") == 5
    finally:
        second.close()
