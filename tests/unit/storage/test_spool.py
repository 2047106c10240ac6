"""The ingest spool on a real directory: append, replay, commit/checkpoint, segment roll and deletion,
torn tails, the size bound and the three fsync policies."""

from __future__ import annotations

import threading
import time

import pytest

from storage.errors import StorageError
from storage.spool import CHECKPOINT, Spool, SpoolFullError
from storage.spool_format import HEADER, scan


def _open(path, **kw):
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("max_bytes", 1 << 20)
    return Spool(path, **kw)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_append_close_reopen_replays_everything_uncommitted(tmp_path, policy):
    sp = _open(tmp_path, fsync=policy, fsync_interval_ms=5)
    seqs = [sp.append("logs" if i % 2 else "traces", 1000 + i, f"payload-{i}".encode()) for i in range(10)]
    assert seqs == list(range(10))
    sp.close()
    sp = _open(tmp_path, fsync=policy)
    got = list(sp.replay())
    assert [(r.seq, r.signal, r.received_unix_nano, r.payload) for r in got] == [
        (i, "logs" if i % 2 else "traces", 1000 + i, f"payload-{i}".encode()) for i in range(10)
    ]
    assert sp.next_seq == 10
    sp.close()


def test_commit_out_of_order_advances_the_checkpoint_only_over_a_contiguous_prefix(tmp_path):
    sp = _open(tmp_path)
    for i in range(6):
        sp.append("logs", i, b"x")
    for seq in (0, 2, 3, 5):
        sp.commit(seq)
    assert sp.committed == 1  # 1 is still outstanding
    sp.close()
    assert (tmp_path / CHECKPOINT).read_text().strip() == "1"
    sp = _open(tmp_path)
    assert [r.seq for r in sp.replay()] == [1, 2, 3, 4, 5]  # at-least-once: 2, 3, 5 replay too (idempotent)
    sp.close()


def test_segments_roll_and_are_deleted_once_committed(tmp_path):
    sp = _open(tmp_path, segment_bytes=1024, max_bytes=1 << 20)
    payload = b"p" * 200
    for i in range(40):
        sp.append("metrics", i, payload)
    assert sp.segments > 5
    before = sp.bytes
    for seq in range(30):
        sp.commit(seq)
    freed = sp.checkpoint()
    assert freed > 0 and sp.bytes == before - freed
    remaining = sorted(p.name for p in tmp_path.glob("*.seg"))
    assert int(remaining[0].split(".")[0]) <= 30  # the segment holding seq 30 is kept
    sp.close()
    sp = _open(tmp_path, segment_bytes=1024)
    assert [r.seq for r in sp.replay()] == list(range(30, 40))
    for seq in range(30, 40):
        sp.commit(seq)
    sp.checkpoint()
    assert sp.segments == 1 and sp.uncommitted == 0
    sp.close()


def test_torn_tail_is_truncated_and_not_fatal(tmp_path):
    sp = _open(tmp_path)
    for i in range(5):
        sp.append("logs", i, b"record-%d" % i)
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash mid-write: header promises 1000 bytes, 10 arrived
        f.write(HEADER.pack(1000, 0, 5, 0, 0) + b"0123456789")
    sp = _open(tmp_path)
    assert sp.torn_bytes == HEADER.size + 10
    assert seg.stat().st_size == good
    assert [r.seq for r in sp.replay()] == [0, 1, 2, 3, 4]
    assert sp.append("logs", 9, b"after") == 5  # appending continues after the last good record
    sp.close()
    sp = _open(tmp_path)
    assert [r.payload for r in sp.replay()][-1] == b"after"
    sp.close()


def test_a_flipped_byte_fails_the_crc(tmp_path):
    sp = _open(tmp_path)
    for i in range(3):
        sp.append("logs", i, b"abcdefgh")
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # inside the last payload
    seg.write_bytes(bytes(data))
    records, good = scan(bytes(data))
    assert [r[0] for r in records] == [0, 1] and good < len(data)
    sp = _open(tmp_path)
    assert [r.seq for r in sp.replay()] == [0, 1]
    sp.close()


def test_full_spool_refuses_and_frees_after_commit(tmp_path):
    sp = _open(tmp_path, segment_bytes=1024, max_bytes=4096)
    n = 0
    with pytest.raises(SpoolFullError, match="full"):
        while True:
            sp.append("logs", n, b"z" * 300)
            n += 1
    assert sp.bytes <= 4096 and n >= 8
    for seq in range(n):
        sp.commit(seq)
    sp.checkpoint()
    sp.append("logs", 0, b"z" * 300)  # room again
    sp.close()


def test_concurrent_appends_get_dense_unique_sequence_numbers(tmp_path):
    sp = _open(tmp_path, fsync="interval", fsync_interval_ms=2, segment_bytes=2048)
    got: list[int] = []
    lock = threading.Lock()

    def worker(k):
        for i in range(50):
            seq = sp.append("traces", k, b"%d-%d" % (k, i))
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(200))
    sp.close()
    sp = _open(tmp_path)
    assert len(list(sp.replay())) == 200
    sp.close()


def test_fsync_hook_sees_every_fsync_of_the_always_policy(tmp_path):
    seen: list[float] = []
    sp = _open(tmp_path, fsync="always")
    sp.on_fsync = seen.append
    for i in range(5):
        sp.append("logs", i, b"x")
    assert len(seen) >= 5 and all(s >= 0 for s in seen)
    sp.close()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(StorageError, match="fsync policy"):
        Spool(tmp_path, fsync="sometimes")
    with pytest.raises(StorageError, match="segment_bytes"):
        Spool(tmp_path, segment_bytes=10)


def test_a_committed_segment_left_behind_by_a_crash_is_deleted_not_replayed(tmp_path):
    sp = _open(tmp_path, segment_bytes=1024)
    for i in range(20):
        sp.append("logs", i, b"q" * 200)
    first = sorted(tmp_path.glob("*.seg"))[0]
    saved = first.read_bytes()
    for i in range(20):
        sp.commit(i)
    sp.close()
    assert not first.exists()
    first.write_bytes(saved)  # as if the process died after the checkpoint, before the unlink
    sp = _open(tmp_path)
    assert list(sp.replay()) == [] and sp.next_seq == 20
    assert not first.exists()
    sp.close()


def test_interval_policy_returns_only_after_the_covering_fsync(tmp_path):
    seen: list[float] = []
    sp = _open(tmp_path, fsync="interval", fsync_interval_ms=100)
    sp.on_fsync = seen.append
    t0 = time.perf_counter()
    seq = sp.append("logs", 1, b"x")
    waited = time.perf_counter() - t0
    assert seen and sp._synced_seq > seq  # an fsync covering the record completed before append returned
    assert 0.0 < waited < 1.0
    sp.close()


def test_never_policy_does_not_fsync(tmp_path):
    seen: list[float] = []
    sp = _open(tmp_path, fsync="never")
    sp.on_fsync = seen.append
    for i in range(20):
        sp.append("logs", i, b"y" * 300)  # rolls segments too
    sp.close()
    assert seen == []
    assert len(list(_open(tmp_path).replay())) == 20


def test_corruption_inside_an_older_segment_does_not_stall_the_checkpoint(tmp_path):
    sp = _open(tmp_path, segment_bytes=1024)
    for i in range(20):
        sp.append("logs", i, b"c" * 200)  # 4 records a segment
    sp.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[HEADER.size + 250] ^= 0xFF  # inside record 1: records 1..3 of this segment are unreadable
    first.write_bytes(bytes(data))
    sp = _open(tmp_path, segment_bytes=1024)
    seqs = [r.seq for r in sp.replay()]
    assert seqs[0] == 0 and 1 not in seqs and seqs[-1] == 19
    assert sp.lost_records == len(range(1, seqs[1]))
    for seq in seqs:
        sp.commit(seq)
    assert sp.committed == 20 and sp.uncommitted == 0  # the gap does not hold the checkpoint back
    sp.close()
