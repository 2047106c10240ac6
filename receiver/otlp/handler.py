"""Receive, transport-neutral: one Export request -> map -> a consumer -> an `Outcome` each transport translates.

The OTLP/gRPC servicers (grpc_server.py) and the OTLP/HTTP handler (http_server.py) both call
`ExportHandler.export` and only differ in how they spell the outcome: a gRPC status or an HTTP status code
(errors.py maps both). The rows go to a `receiver.consumer.Consumer`: the spool, which wraps the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from receiver.consumer import Consumer, NoRoomError, Received
from receiver.metrics import Metrics
from receiver.otlp.errors import InvalidInputError, Outcome, UnavailableError, outcome_of
from receiver.otlp.signals import SIGNALS, SignalSpec
from receiver.ratelog import warn_limited
from receiver.rows.mapper import MappedBatch, RowMapper

__all__ = ["SIGNALS", "ExportHandler", "Outcome", "SignalSpec", "build_response"]

logger = logging.getLogger(__name__)


def build_response(spec: SignalSpec, outcome: Outcome) -> Any:
    """The Export*ServiceResponse; `partial_success` stays unset on full success (OTLP spec)."""
    response = spec.response_type()
    if outcome.rejected or outcome.message:
        setattr(response.partial_success, spec.rejected_field, outcome.rejected)
        response.partial_success.error_message = outcome.message
    return response


class ExportHandler:
    """The shared body of every Export, whatever the transport: map, hand to the consumer, answer.

    Args:
        consumer: where the rows go (the spool wrapping the pipeline, or the pipeline).
        has_room: asked before mapping, so a full queue is refused before paying for the mapping.
    """

    def __init__(
        self,
        consumer: Consumer,
        mapper: RowMapper,
        metrics: Metrics,
        retry_after_s: int,
        has_room: Callable[[], bool] = lambda: True,
    ):
        self.consumer, self.mapper, self.metrics, self.retry_after_s = (
            consumer,
            mapper,
            metrics,
            retry_after_s,
        )
        self.has_room = has_room

    def export(self, spec: SignalSpec, request: Any, transport: str) -> Outcome:
        """Map `request` and hand its rows to the consumer; never raises."""
        start = time.perf_counter()
        signal = spec.name
        try:
            outcome = self._export(spec, request, transport)
        except (InvalidInputError, UnavailableError) as exc:
            warn_limited(
                logger,
                f"refused:{signal}:{transport}:{type(exc).__name__}",
                "%s export over %s refused: %s",
                signal,
                transport,
                exc,
            )
            outcome = outcome_of(exc)
        except Exception as exc:
            logger.exception("%s export over %s failed", signal, transport)
            outcome = outcome_of(exc)
        finally:
            self.metrics.export_seconds.labels(signal).observe(time.perf_counter() - start)
        self.metrics.requests.labels(signal, transport, outcome.label).inc()
        return outcome

    def _export(self, spec: SignalSpec, request: Any, transport: str) -> Outcome:
        signal, noun = spec.name, spec.noun
        if not self.has_room():
            self.metrics.refused.labels(signal, "queue_full", transport).inc()
            raise UnavailableError("otad ingest queue is full; retry later", self.retry_after_s)
        received = time.time_ns()
        batch: MappedBatch = spec.map(self.mapper, request, received)
        self._account(signal, noun, batch, transport)
        if batch.total and batch.rejections and not batch.rows and not batch.ignored:
            raise InvalidInputError(batch.error_message(noun))
        try:
            self.consumer.consume(Received(signal, request, received, batch.rows, transport))
        except NoRoomError as exc:
            self.metrics.refused.labels(signal, exc.reason, transport).inc(len(batch.rows))
            raise UnavailableError(str(exc), self.retry_after_s) from None
        self.metrics.accepted.labels(signal, transport).inc(len(batch.rows))
        return Outcome(rejected=len(batch.rejections), message=batch.error_message(noun))

    def _account(self, signal: str, noun: str, batch: MappedBatch, transport: str) -> None:
        if batch.ignored:
            self.metrics.ignored.labels(signal).inc(batch.ignored)
        if batch.bounded:  # stored, but with a field cut to what storage holds (docs/receiver.md)
            for name, n in batch.bounded.items():
                self.metrics.bounded.labels(signal, name).inc(n)
            warn_limited(logger, f"bounded:{signal}", "%s", batch.bounded_message(noun))
        if batch.rejections:
            reasons: dict[str, int] = {}
            for rej in batch.rejections:
                reason = rej.reason.split(":")[0][:40]
                reasons[reason] = reasons.get(reason, 0) + 1
            for reason, n in reasons.items():
                self.metrics.rejected.labels(signal, reason, transport).inc(n)
            warn_limited(logger, f"rejected:{signal}", "%s", batch.error_message(noun))
