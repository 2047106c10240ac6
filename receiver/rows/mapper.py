"""Map to rows: OTLP export requests -> MappedBatch(rows, rejections), one OCSF-style Row per item.

The column names, class rules and id tables are documented in docs/mapping.md. Every item of a request
ends up exactly once as a row, a rejection or ignored; mapping one item never fails the others. Every row is
bounded to what storage holds on the way out (receiver/rows/bounds.py, "Bounds on stored fields" in
docs/receiver.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from model.schema import Row
from receiver.events import (
    OTAD_SCOPE,  # otad's own anomaly events: the Collector should drop them, otad skips them
)
from receiver.rows.bounds import ResourceBounds, bound_resource, bound_row
from receiver.rows.common import RejectError, ResourceContext, resource_context
from receiver.rows.logs import map_log_record
from receiver.rows.metrics import SeriesState, map_point, metric_info
from receiver.rows.spans import map_span

__all__ = ["MappedBatch", "Rejection", "RowMapper"]

_REASON_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Rejection:
    """One item that can never be mapped."""

    index: str  # e.g. "resource 0, scope 1, record 7"
    reason: str  # e.g. "invalid trace_id length 5"


@dataclass(slots=True)
class MappedBatch:
    """The rows of one export request, and what was rejected or skipped on purpose."""

    rows: list[Row] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    ignored: int = 0  # otad's own anomaly events and points flagged NO_RECORDED_VALUE
    total: int = 0  # items in the request (log records / spans / data points)
    bounded: dict[str, int] = field(default_factory=dict)  # field -> rows stored with it bounded
    bounded_rows: int = 0  # rows with any field bounded
    bounded_notes: dict[str, str] = field(default_factory=dict)  # field -> what was done (first row's words)

    def note_bounded(self, found: list[tuple[str, str]]) -> None:
        self.bounded_rows += 1
        for name, note in found:
            self.bounded[name] = self.bounded.get(name, 0) + 1
            self.bounded_notes.setdefault(name, note)

    def bounded_message(self, noun: str) -> str:
        """e.g. "3 log records stored with bounded fields: uid (2, over 64 bytes, replaced by a hash), ..."."""
        parts = ", ".join(f"{name} ({n}, {self.bounded_notes[name]})" for name, n in self.bounded.items())
        return f"{self.bounded_rows} {noun} stored with bounded fields: {parts}"

    def error_message(self, noun: str) -> str:
        """The partial_success message, e.g. "3/120 log records rejected: <reason> (first at <index>)"."""
        if not self.rejections:
            return ""
        first = self.rejections[0]
        message = (
            f"{len(self.rejections)}/{self.total} {noun} rejected: {first.reason} (first at {first.index})"
        )
        others = len({r.reason for r in self.rejections} - {first.reason})
        if others:
            message += f"; and {others} other reason{'s' if others > 1 else ''}"
        return message


def _reason(exc: Exception) -> str:
    if isinstance(exc, RejectError):
        return str(exc)
    text = f"mapping failed: {type(exc).__name__}: {exc}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


class RowMapper:
    """Maps OTLP export requests to rows.

    Stateful only for cumulative metric sums, histograms and summaries (the previous point of each series,
    at most `max_series` series, least recently updated evicted). Thread-safe.
    """

    def __init__(self, max_series: int = 100_000) -> None:
        self._series = SeriesState(max_series)

    @property
    def series_count(self) -> int:
        """How many cumulative series are remembered."""
        return len(self._series)

    def map_logs(
        self, request: ExportLogsServiceRequest, received_unix_nano: int | None = None
    ) -> MappedBatch:
        received = received_unix_nano or time.time_ns()
        return self._walk(
            request.resource_logs,
            "scope_logs",
            "record",
            lambda scoped: scoped.log_records,
            lambda record, ctx, scope: map_log_record(record, ctx, scope, received),
        )

    def map_traces(
        self, request: ExportTraceServiceRequest, received_unix_nano: int | None = None
    ) -> MappedBatch:
        received = received_unix_nano or time.time_ns()
        return self._walk(
            request.resource_spans,
            "scope_spans",
            "span",
            lambda scoped: scoped.spans,
            lambda span, ctx, scope: map_span(span, ctx, scope, received),
        )

    def map_metrics(
        self, request: ExportMetricsServiceRequest, received_unix_nano: int | None = None
    ) -> MappedBatch:
        received = received_unix_nano or time.time_ns()
        state = self._series

        def points(scoped) -> Iterable[tuple[str, object]]:
            for mi, metric in enumerate(scoped.metrics):
                found = metric_info(metric)
                if found is not None:
                    info, data_points = found
                    for pi, point in enumerate(data_points):
                        yield f"metric {mi}, point {pi}", (info, point)

        def map_one(item, ctx, scope):
            info, point = item
            return map_point(point, info, ctx, scope, state, received)

        return self._walk(request.resource_metrics, "scope_metrics", None, lambda s: list(points(s)), map_one)

    @staticmethod
    def _walk(
        resources, scopes_attr: str, noun: str | None, items_of: Callable, map_one: Callable
    ) -> MappedBatch:
        """Map every item of every scope of every resource, containing failures to the item.

        `items_of(scoped)` lists the items of one scope; with `noun=None` it yields (index text, item) pairs.
        """
        batch = MappedBatch()
        rows, rejections = batch.rows, batch.rejections
        for ri, resource in enumerate(resources):
            try:
                ctx: ResourceContext | None
                bounds: ResourceBounds | None
                ctx, bounds = bound_resource(resource_context(resource.resource))
                broken = ""
            except Exception as exc:  # one bad resource must not fail the request
                ctx, bounds, broken = None, None, _reason(exc)
            for si, scoped in enumerate(getattr(resource, scopes_attr)):
                items = items_of(scoped)
                batch.total += len(items)
                scope = scoped.scope.name
                if scope == OTAD_SCOPE:
                    batch.ignored += len(items)
                    continue
                for i, item in enumerate(items):
                    where = None
                    if noun is None:
                        where, item = item
                    try:
                        if bounds is None:  # the resource is broken (ctx is None too)
                            raise RejectError(broken)
                        row = map_one(item, ctx, scope)
                        found = bound_row(row, bounds) if row is not None else None
                    except Exception as exc:  # an item that cannot be mapped becomes a rejection
                        where = where or f"{noun} {i}"
                        rejections.append(Rejection(f"resource {ri}, scope {si}, {where}", _reason(exc)))
                        continue
                    if row is None:
                        batch.ignored += 1
                    else:
                        rows.append(row)
                        if found:
                            batch.note_bounded(found)
        return batch
