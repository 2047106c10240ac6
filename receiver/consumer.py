"""The seam between the OTLP transports and what keeps their rows: one request's rows, and a one-method consumer.

The Export handler (receiver/otlp/handler.py) maps a request to rows and hands them to a `Consumer`, as the
Collector's receivers hand data to a `consumer.Logs`. The pipeline is one; the spool (receiver/ingest.py) is one
that wraps it (durable first, then queued).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from model.schema import Row

__all__ = ["Consumer", "NoRoomError", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted Export request and the rows mapped from it."""

    signal: str  # logs | traces | metrics
    request: Any  # the Export*ServiceRequest message (the spool keeps its bytes)
    received_unix_nano: int  # receive time: a replay maps to the same rows
    rows: list[Row] = field(default_factory=list)
    transport: str = "grpc"
    on_stored: Callable[[], None] | None = None  # run once every row is stored (the spool commits)

    def with_on_stored(self, on_stored: Callable[[], None]) -> Received:
        return replace(self, on_stored=on_stored)


class NoRoomError(Exception):
    """No room for the rows now (queue or spool full, spool unwritable); the client is told to retry.

    `reason` is the metric label: queue_full, spool_full or spool_error.
    """

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


class Consumer(Protocol):
    def consume(self, received: Received) -> None:
        """Take the rows (durably, if this consumer promises that) or raise NoRoomError."""
