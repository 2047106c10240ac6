"""Receive, durably: an accepted request is appended to the spool before the client gets OK, then queued.

The spool record holds the request bytes, the signal and the receive time, so a replay maps to the same rows
(uids are content-derived, Milvus writes are upserts keyed by uid): at-least-once processing without duplicates.
A spool record is committed once every row mapped from it is stored; the checkpoint then moves past it.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from prometheus_client import Counter, Gauge, Histogram

from receiver.consumer import NoRoomError, Received
from receiver.metrics import Metrics
from receiver.otlp.signals import SIGNALS
from receiver.pipeline import Pipeline
from receiver.rows.mapper import RowMapper
from storage.errors import StorageError
from storage.spool import Spool, SpoolFullError

logger = logging.getLogger(__name__)


class SpoolMetrics:
    """The spool's Prometheus metrics, registered in the service's registry."""

    def __init__(self, metrics: Metrics, spool: Spool) -> None:
        r = metrics.registry
        self.bytes = Gauge("otad_spool_bytes", "Bytes in live spool segments (not yet stored)", registry=r)
        self.bytes.set_function(lambda: spool.bytes)
        self.segments = Gauge("otad_spool_segments", "Live spool segment files", registry=r)
        self.segments.set_function(lambda: spool.segments)
        self.uncommitted = Gauge(
            "otad_spool_uncommitted_records", "Spooled requests not yet fully stored", registry=r
        )
        self.uncommitted.set_function(lambda: spool.uncommitted)
        self.replayed = Counter(
            "otad_spool_replayed_records", "Spooled requests replayed at start", registry=r
        )
        self.fsync_seconds = Histogram(
            "otad_spool_fsync_seconds",
            "Time per spool fsync",
            registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )


class SpooledIngest:
    """The consumer in front of the pipeline: spool first, then queue; replay at start.

    Args:
        spool: the opened spool (its un-committed records are replayed by `start`).
        pipeline: where rows go.
        metrics: the service's metrics.
        checkpoint_interval_s: how often the checkpoint is written and committed segments deleted.
    """

    def __init__(
        self, spool: Spool, pipeline: Pipeline, metrics: Metrics, *, checkpoint_interval_s: float = 1.0
    ) -> None:
        self.spool, self.pipeline, self.metrics = spool, pipeline, metrics
        self.checkpoint_interval_s = checkpoint_interval_s
        self.mapper = RowMapper()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.replayed = 0
        self.replay_done = threading.Event()
        self.spool_metrics = SpoolMetrics(metrics, spool)
        spool.on_fsync = self.spool_metrics.fsync_seconds.observe

    # ----- the hot path (gRPC threads) -----
    def consume(self, received: Received) -> None:
        """The Consumer protocol: spool the request, then queue its rows; returns once the request is as durable
        as the fsync policy says.

        Raises:
            NoRoomError: the spool or the queue is full, or the spool cannot be written (the client retries; its
            retry is deduplicated by uid).
        """
        if not received.rows:  # nothing to store (all rejected or ignored): nothing to keep
            return
        try:
            seq = self.spool.append(
                received.signal, received.received_unix_nano, received.request.SerializeToString()
            )
        except SpoolFullError as exc:
            raise NoRoomError(str(exc), "spool_full") from None
        except StorageError as exc:
            logger.error("spool append failed: %s", exc)
            raise NoRoomError(f"otad cannot write its ingest spool: {exc}", "spool_error") from None
        try:
            self.pipeline.consume(received.with_on_stored(partial(self.spool.commit, seq)))
        except NoRoomError:
            self.spool.commit(
                seq
            )  # the client is told to retry, so this copy is neither processed nor replayed
            raise

    # ----- lifecycle -----
    def start(self) -> None:
        """Replay what the last run left un-committed (in the background), and start checkpointing."""
        pending = self.spool.pending_at_open
        if pending:
            logger.info(
                "spool: replaying %d requests not yet stored (%d bytes in %d segments)",
                pending,
                self.spool.bytes,
                self.spool.segments,
            )
        for target, name in (
            (self._replay, "otad-spool-replay"),
            (self._checkpoint_loop, "otad-spool-checkpoint"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _replay(self) -> None:
        try:
            for record in self.spool.replay():
                if self._stop.is_set():
                    return
                spec = SIGNALS[record.signal]
                request = spec.request_type()
                try:
                    request.ParseFromString(record.payload)
                except Exception:  # CRC-checked, so only a bug or a version skew gets here
                    logger.exception("spool record %d does not parse; skipped", record.seq)
                    self.spool.commit(record.seq)
                    continue
                mapped = spec.map(self.mapper, request, record.received_unix_nano)
                on_stored = partial(self.spool.commit, record.seq)
                while not self.pipeline.offer(mapped.rows, on_stored=on_stored):
                    if self._stop.wait(0.05):
                        return
                self.replayed += 1
                self.spool_metrics.replayed.inc()
            if self.replayed:
                logger.info("spool: %d requests replayed into the pipeline", self.replayed)
        finally:
            self.replay_done.set()

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self.checkpoint_interval_s):
            try:
                self.spool.checkpoint()
            except OSError:
                logger.exception("spool checkpoint failed")

    def stop(self) -> None:
        """Stop replaying, write the final checkpoint and close the spool (call after the pipeline stopped)."""
        self._stop.set()
        for t in self._threads:
            t.join(5.0)
        uncommitted = self.spool.uncommitted
        self.spool.close()
        if uncommitted:
            logger.info("spool: %d requests not yet stored stay in the spool for the next start", uncommitted)


def open_spooled_ingest(settings, pipeline: Pipeline, metrics: Metrics) -> SpooledIngest:
    """The spool under `<data dir>/spool` with the settings' policy, wired to the pipeline and metrics."""
    spool = Spool(
        settings.data_dir / "spool",
        max_bytes=settings.spool_max_bytes,
        segment_bytes=settings.spool_segment_bytes,
        fsync=settings.spool_fsync,
        fsync_interval_ms=settings.spool_fsync_interval_ms,
    )
    return SpooledIngest(spool, pipeline, metrics)
