"""OTLP/JSON files -> rows (`otad train/score --input`), optionally on several processes.

Lines are decoded as light messages (receiver/otlp/otlpjson_fast.py) and mapped by the one row mapper
(receiver/rows/mapper.py). With `workers`, the input is cut into chunks of lines that worker processes decode and map; logs and spans
map the same anywhere, so the workers map them and send the rows back, while metric lines come back unmapped and
are mapped here, in file order, because cumulative series turn into deltas against the series' previous point.
Rows, warnings and the first error (naming file and line) are the same, and in the same order, as reading the files
line by line in one process. Workers are off by default: on the 2-core CI machine class, shared with other
jobs, two workers plus this process (unpickling rows, mapping metrics) were slower than one process (42 s vs 26 s
for 335k records, benchmarks/bench_otlpjson.py); they may pay off with more free cores.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from model.schema import Row
from receiver.otlp import otlpjson_fast  # noqa: F401 - loaded in the fork server before the workers fork
from receiver.otlp.otlpjson import OtlpJsonError, Signal, SignalRequest, from_dict_light
from receiver.otlp.otlpjson_fast import LightMessage
from receiver.rows.mapper import MappedBatch, RowMapper

logger = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20

# One chunk's result per line: (lineno, "metrics", line) for a metric line, else
# (lineno, signal, row tuples, ignored, rejections, error message).
_Entry = tuple


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees everything acyclic).

    Reading creates millions of small objects and no cycles; the collector's repeated passes over them (and over
    the growing list of rows) took about half the time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _decode(path: str, lineno: int, line: str) -> tuple[Signal, SignalRequest | LightMessage]:
    try:
        return from_dict_light(json.loads(line))
    except (json.JSONDecodeError, OtlpJsonError) as exc:
        raise OtlpJsonError(f"{path}:{lineno}: {exc}") from exc


def _map(mapper: RowMapper, signal: Signal, request: SignalRequest | LightMessage) -> MappedBatch:
    """Map one decoded line. The casts: `signal` names the request type, and a light message reads like the
    protobuf request of its signal (receiver/otlp/otlpjson_fast.py), which is all the mapper does with it."""
    if signal == "logs":
        return mapper.map_logs(cast(ExportLogsServiceRequest, request))
    if signal == "traces":
        return mapper.map_traces(cast(ExportTraceServiceRequest, request))
    return mapper.map_metrics(cast(ExportMetricsServiceRequest, request))


def _lines(path: Path, progress: Callable[[int], object] | None = None) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if progress is not None:
                progress(len(line))  # characters: bytes for the ASCII that OTLP/JSON mostly is
            if line.strip():
                yield lineno, line


def _chunks(
    path: Path, progress: Callable[[int], object] | None = None
) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    chunk, size = [], 0
    for lineno, line in _lines(path, progress):
        chunk.append((lineno, line))
        size += len(line)
        if size >= CHUNK_BYTES:
            yield str(path), chunk
            chunk, size = [], 0
    if chunk:
        yield str(path), chunk


_worker_mapper: RowMapper | None = None


def _as_tuple(row: Row) -> tuple:
    return (
        row.uid,
        row.signal,
        row.time_unix_nano,
        row.service,
        row.class_uid,
        row.activity_id,
        row.severity_id,
        row.status_id,
        row.fields,
        row.trace_id,
        row.span_id,
        row.resource,
    )


def _map_chunk(job: tuple[str, list[tuple[int, str]]]) -> list[_Entry]:
    """In a worker: decode every line of a chunk; map logs and spans (rows as tuples: cheaper to pickle)."""
    global _worker_mapper
    if _worker_mapper is None:
        _worker_mapper = RowMapper()
    path, lines = job
    out: list[_Entry] = []
    with gc_paused():
        for lineno, line in lines:
            signal, request = _decode(path, lineno, line)
            if signal == "metrics":
                out.append((lineno, signal, line))
                continue
            batch = _map(_worker_mapper, signal, request)
            out.append(
                (
                    lineno,
                    signal,
                    [_as_tuple(r) for r in batch.rows],
                    batch.ignored,
                    len(batch.rejections),
                    batch.error_message("items"),
                )
            )
    return out


class _Reader:
    def __init__(self) -> None:
        self.mapper = RowMapper()
        self.rows: list[Row] = []
        self.rejected = self.ignored = 0
        self.progress: Callable[[int], object] | None = None  # called with each line's length

    def add(self, path, lineno: int, batch: MappedBatch) -> None:
        self.rows.extend(batch.rows)
        self.ignored += batch.ignored
        if batch.rejections:
            self.rejected += len(batch.rejections)
            logger.warning("%s:%d: %s", path, lineno, batch.error_message("items"))

    def map(self, path, lineno: int, signal: Signal, request: SignalRequest | LightMessage) -> None:
        self.add(path, lineno, _map(self.mapper, signal, request))

    def read(self, path: Path) -> None:
        for lineno, line in _lines(path, self.progress):
            self.map(path, lineno, *_decode(str(path), lineno, line))

    def read_parallel(self, path: Path, pool) -> None:
        for entries in pool.imap(_map_chunk, _chunks(path, self.progress)):
            for entry in entries:
                lineno, signal = entry[0], entry[1]
                if signal == "metrics":
                    self.map(path, lineno, *_decode(str(path), lineno, entry[2]))
                    continue
                _, _, rows, ignored, rejected, message = entry
                self.rows.extend(Row(*r) for r in rows)
                self.ignored += ignored
                if rejected:
                    self.rejected += rejected
                    logger.warning("%s:%d: %s", path, lineno, message)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool(workers: int):
    """A pool whose workers fork from a single-threaded server process that has this module loaded.

    Not plain fork: forking this process, which may run gRPC, Milvus or torch threads, can copy a lock another
    thread holds into the child, which then waits on it forever (it hung a test run). Not spawn: each worker would
    import the decoder and mapper again.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx.Pool(workers)


def read_rows(
    paths: list[Path], workers: int = 0, progress: Callable[[int], object] | None = None
) -> list[Row]:
    """Every record of OTLP/JSON files (Collector file-exporter format) as rows, sorted by time.

    `workers`: processes decoding and mapping in parallel (e.g. `usable_cores()`); 0 reads in this process.
    `progress`: called with the length of each line read (a progress bar over the files' sizes).
    Rejected items are logged per line and counted, never hidden.

    Raises:
        OtlpJsonError: the first line (in file order) that is not an OTLP/JSON request, naming file and line.
    """
    paths = [Path(p) for p in paths]
    if "forkserver" not in multiprocessing.get_all_start_methods():
        workers = 0
    reader = _Reader()
    reader.progress = progress
    with gc_paused():
        if workers:
            with _pool(workers) as pool:
                for path in paths:
                    reader.read_parallel(path, pool)
        else:
            for path in paths:
                reader.read(path)
        reader.rows.sort(key=lambda r: r.time_unix_nano)
    logger.info(
        "read %d rows from %d file(s) (%d rejected, %d ignored)",
        len(reader.rows),
        len(paths),
        reader.rejected,
        reader.ignored,
    )
    return reader.rows
