"""Ingest spool: accepted OTLP requests are appended here, durably, before the client gets OK.

Layout under ``<data dir>/spool``::

    00000000000000000000.seg   append-only segment, named after the sequence number of its first record
    00000000000000004711.seg
    checkpoint                 "<committed seq>\\n": every record below it is stored in Milvus

A record is ``header + payload`` with header ``<I length><I crc32><Q seq><B signal><Q received_unix_nano>``
(little-endian); the CRC covers everything after the CRC field. On open, each segment is scanned: a record whose
length runs past the end of the file or whose CRC does not match ends the segment there (a torn tail after a
crash mid-write) and the file is truncated to its last good record. Records at or above the checkpoint are handed
back for replay; processing is at-least-once, and content-derived row uids make the replay idempotent.

Sequence numbers are dense; the caller reports each record as done with `commit(seq)` once every row mapped from
it is stored (in any order). The checkpoint is the lowest sequence number not yet done; it is written atomically
(temporary file, fsync, rename, fsync of the directory), and segments wholly below it are deleted.

fsync policy (``OTAD_SPOOL_FSYNC``):

* ``always``   -- an append returns after an fsync covering it. Concurrent appends share one fsync (group
  commit happens naturally: whoever fsyncs covers every record written before it). Survives power loss.
* ``interval`` -- a background thread fsyncs every ``fsync_interval_ms``; an append waits for the fsync that
  covers it. Same guarantee as ``always``; fewer fsyncs under load, up to ``fsync_interval_ms`` added latency.
* ``never``    -- no fsync; data is in the OS page cache when the client gets OK. Survives a crash or
  ``kill -9`` of otad, not a power loss or kernel crash.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.errors import StorageError
from storage.spool_format import HEADER, SIGNALS, SUFFIX, SpoolRecord, _segment_name, encode, scan

logger = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "interval", "never")
CHECKPOINT = "checkpoint"


class SpoolFullError(StorageError):
    """The spool holds `max_bytes` of unprocessed data; the caller refuses with UNAVAILABLE."""


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A bounded, durable, append-only log of accepted requests with a commit checkpoint.

    Args:
        directory: where segments and the checkpoint live (created).
        max_bytes: appends beyond this many bytes of live segments raise `SpoolFullError`.
        segment_bytes: a segment is closed and a new one started once it reaches this size.
        fsync: ``always`` | ``interval`` | ``never`` (see the module docstring).
        fsync_interval_ms: group-commit period for ``interval``.
        on_fsync: called with the seconds each fsync took (a metrics hook).

    Raises:
        StorageError: bad arguments, or the directory is unusable.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 64 << 20,
        fsync: str = "interval",
        fsync_interval_ms: int = 10,
        on_fsync: Callable[[float], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise StorageError(
                f"spool fsync policy must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}"
            )
        if segment_bytes < 1024 or max_bytes < segment_bytes:
            raise StorageError(f"need 1024 <= segment_bytes ({segment_bytes}) <= max_bytes ({max_bytes})")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.fsync_policy, self.fsync_interval_s = fsync, fsync_interval_ms / 1000
        self.on_fsync = on_fsync
        self._lock = threading.Lock()  # appends, segment list, commit bookkeeping
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._synced = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._done: set[int] = set()
        self._closed = False
        self.torn_bytes = 0  # bytes truncated at open (torn tails)
        self.lost_records = 0  # records lost to corruption found at open
        self._recover()
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced_seq = self._next_seq  # everything below it is on disk
        self._written_seq = self._next_seq
        self._checkpointed = self.committed
        self._flusher: threading.Thread | None = None
        if fsync == "interval":
            self._flusher = threading.Thread(target=self._flush_loop, name="otad-spool-fsync", daemon=True)
            self._flusher.start()

    # ----- open and recover -----
    def _recover(self) -> None:
        cp = self.dir / CHECKPOINT
        self.committed = int(cp.read_text().strip() or 0) if cp.exists() else 0
        paths = sorted(self.dir.glob("*" + SUFFIX))
        next_seq = self.committed
        present: list[tuple[int, int]] = []  # (first, last) seq of each kept segment's good records
        for path in paths:
            data = path.read_bytes()
            records, good = scan(data)
            size = len(data)
            del data
            if good < size:
                logger.warning(
                    "spool segment %s: %d bytes after the last good record (torn write); truncated",
                    path.name,
                    size - good,
                )
                self.torn_bytes += size - good
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            first = records[0][0] if records else int(path.stem)
            if records and records[-1][0] < self.committed:
                path.unlink()  # wholly committed; a crash came between checkpoint and delete
                continue
            if not records and path != paths[-1]:
                path.unlink()
                continue
            self._segments.append(_Segment(first, path, good))
            if records:
                next_seq = max(next_seq, records[-1][0] + 1)
                present.append((records[0][0], records[-1][0]))
        self._next_seq = next_seq
        self.committed = min(self.committed, next_seq)
        # Records lost to corruption inside a segment leave a gap of sequence numbers; they can never be
        # replayed, so they count as done (or the checkpoint could never pass them and the spool would fill).
        expected = self.committed
        for first, last in sorted(present):
            if first > expected:
                logger.error(
                    "spool records %d..%d are unreadable (corrupt segment); they cannot be replayed",
                    expected,
                    first - 1,
                )
                self.lost_records += first - expected
                self._done.update(range(expected, first))
            expected = max(expected, last + 1)
        while self.committed in self._done:
            self._done.discard(self.committed)
            self.committed += 1
        if not self._segments or self._segments[-1].size > 0 or self._segments[-1].first_seq != next_seq:
            self._new_segment_locked(next_seq)
        self._replay_range = (self.committed, next_seq)

    def _new_segment_locked(self, first_seq: int) -> None:
        path = self.dir / _segment_name(first_seq)
        if self._segments and self._segments[-1].path == path:
            return
        path.touch()
        _fsync_dir(self.dir)
        self._segments.append(_Segment(first_seq, path, path.stat().st_size))

    @property
    def pending_at_open(self) -> int:
        """Records that were not committed when the spool was opened (they are replayed)."""
        return self._replay_range[1] - self._replay_range[0]

    def replay(self) -> Iterator[SpoolRecord]:
        """The records not committed at open, oldest first (read lazily, one segment at a time)."""
        start, end = self._replay_range
        with self._lock:
            segments = [s for s in self._segments if s.first_seq < end]
        for seg in segments:
            try:
                data = seg.path.read_bytes()
            except FileNotFoundError:  # committed and deleted meanwhile
                continue
            records, _ = scan(data)
            for seq, off, size in records:
                if start <= seq < end:
                    _, _, _, sig, recv = HEADER.unpack_from(data, off)
                    yield SpoolRecord(seq, SIGNALS[sig], recv, data[off + HEADER.size : off + size])

    # ----- append -----
    def append(self, signal: str, received_unix_nano: int, payload: bytes) -> int:
        """Append one record and return its sequence number once it is as durable as the policy says.

        Raises:
            SpoolFullError: the spool is at `max_bytes`.
            StorageError: the spool is closed or the disk write failed.
        """
        with self._lock:
            if self._closed:
                raise StorageError("the spool is closed")
            seq = self._next_seq
            data = encode(seq, signal, received_unix_nano, payload)
            if self._bytes_locked() + len(data) > self.max_bytes:
                raise SpoolFullError(
                    f"the ingest spool is full ({self._bytes_locked()} of {self.max_bytes} bytes "
                    "waiting to be stored); retry later"
                )
            seg = self._segments[-1]
            if seg.size and seg.size + len(data) > self.segment_bytes:
                self._roll_locked(seq)
                seg = self._segments[-1]
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError as exc:
                raise StorageError(f"spool write to {seg.path} failed: {exc}") from exc
            seg.size += len(data)
            self._next_seq = seq + 1
            self._written_seq = seq + 1
        if self.fsync_policy == "always":
            self._sync(seq + 1)
        elif self.fsync_policy == "interval":
            with self._lock:
                while self._synced_seq <= seq and not self._closed:
                    self._synced.wait(1.0)
        return seq

    def _roll_locked(self, first_seq: int) -> None:
        """Close the current segment (fsynced unless the policy is `never`) and start a new one."""
        if self.fsync_policy != "never":
            self._timed_fsync(self._fd)
            self._synced_seq = self._written_seq
            self._synced.notify_all()
        os.close(self._fd)
        self._new_segment_locked(first_seq)
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _timed_fsync(self, fd: int) -> None:
        t0 = time.perf_counter()
        os.fsync(fd)
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t0)

    def _sync(self, upto: int) -> None:
        """Make every record below `upto` durable (one fsync covers all writes before it)."""
        with self._sync_lock:
            with self._lock:
                if self._synced_seq >= upto or self._closed:
                    return
                target, fd = self._written_seq, os.dup(self._fd)  # a roll may close the original meanwhile
            try:
                self._timed_fsync(fd)  # outside _lock: appends continue meanwhile
            finally:
                os.close(fd)
            with self._lock:
                self._synced_seq = max(self._synced_seq, target)
                self._synced.notify_all()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.fsync_interval_s)
            with self._lock:
                if self._closed:
                    return
                dirty = self._written_seq > self._synced_seq
            if dirty:
                try:
                    self._sync(self._written_seq)
                except OSError:
                    logger.exception("spool fsync failed")

    # ----- commit -----
    def commit(self, seq: int) -> None:
        """Record `seq` as done: every row mapped from it is stored."""
        with self._lock:
            if seq < self.committed:
                return
            self._done.add(seq)
            while self.committed in self._done:
                self._done.discard(self.committed)
                self.committed += 1

    def checkpoint(self) -> int:
        """Write the checkpoint (atomically) and delete wholly committed segments; returns the bytes freed."""
        with self._lock:
            committed = self.committed
            if committed == self._checkpointed:
                return 0
            tmp = self.dir / (CHECKPOINT + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{committed}\n")
                f.flush()
                if self.fsync_policy != "never":
                    os.fsync(f.fileno())
            os.replace(tmp, self.dir / CHECKPOINT)
            if self.fsync_policy != "never":
                _fsync_dir(self.dir)
            self._checkpointed = committed
            freed = 0
            # A segment is wholly committed when the next segment starts at or below the checkpoint.
            while len(self._segments) > 1 and self._segments[1].first_seq <= committed:
                seg = self._segments.pop(0)
                seg.path.unlink(missing_ok=True)
                freed += seg.size
            return freed

    # ----- introspection and close -----
    def _bytes_locked(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes_locked()

    @property
    def segments(self) -> int:
        with self._lock:
            return len(self._segments)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def uncommitted(self) -> int:
        with self._lock:
            return self._next_seq - self.committed

    def close(self) -> None:
        """Fsync (unless `never`), write the checkpoint, close. Safe to call twice."""
        if self._closed:
            return
        if self.fsync_policy != "never":
            self._sync(self._written_seq)
        self.checkpoint()
        with self._lock:
            self._closed = True
            self._synced.notify_all()
            os.close(self._fd)
        if self._flusher is not None:
            self._flusher.join(2.0)
