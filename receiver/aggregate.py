"""Emit stage, before the sender: repeats of one anomaly pattern update one finding instead of each being an event.

A *pattern* is general, never dataset-specific: the service, the signal, the source record's outcome and, when
it did not fail, the kind of detector that fired (`pattern_key`). Anomalies of one pattern less than `window_s`
apart are one finding. Its first event, activity Create, waits `wait_s` for the first repeats (as Alertmanager's
group_wait does), so a short burst is one event with its count; later anomalies raise `count` and `last_seen` and
are reported by Update events, at most `max_per_window` per finding per window (spaced `window_s /
max_per_window` apart), plus one closing Update once the finding has been quiet for `window_s` with anomalies not
yet reported. A global bound, `max_per_minute`, holds events back (never drops them) when many findings are open
at once: a held-back Create or closing Update goes out in a later minute, so every finding is reported.

Time is the records' own (the latest record time seen, across all rows), so a replay aggregates like live
traffic. Every anomaly is stored whatever happens here (receiver/writer.py); only the emission is aggregated.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from model.schema import Anomaly, content_uid
from receiver.events import AnomalyEvent, Occurrence, anomaly_uid

__all__ = ["EventLimits", "FindingAggregator", "pattern_key"]

# The members that judge a whole record's content are one kind; the others each judge one aspect.
_CONTENT_MEMBERS = frozenset({"knn", "pattern", "isolation"})
_MAX_OPEN = 10_000  # open findings kept; beyond it the quietest is closed early
_MAX_PENDING_SOURCES = 200  # source uids kept per finding between two of its events
# Anomalies remembered as folded: a batch whose store failed comes back re-scored, and its anomalies must not
# count twice or be sent again (their events are returned as first built, to be stored).
_MAX_FOLDED = 65_536


@dataclass(frozen=True, slots=True)
class EventLimits:
    """OTAD_EVENT_WINDOW_S, _MAX_PER_WINDOW, _MAX_PER_MINUTE, _WAIT_S; window 0: no aggregation."""

    window_s: float = 300.0
    max_per_window: int = 1
    max_per_minute: int = 60
    wait_s: float = 60.0  # the Create waits this long for the first repeats (Alertmanager's group_wait)

    def __post_init__(self) -> None:
        if self.window_s < 0 or self.max_per_window < 1 or self.max_per_minute < 1 or self.wait_s < 0:
            raise ValueError(f"need window_s, wait_s >= 0 and both maxima >= 1, got {self}")


def pattern_key(anomaly: Anomaly) -> tuple[str, ...]:
    """What makes two anomalies "the same": service, signal, the record's outcome (failed, refused, or ok) and,
    for records that did not fail, the kind of detector that fired.

    The outcome is failed (OCSF status failure or HTTP 5xx), refused (HTTP 4xx) or ok. A failing record is a
    failure whichever member noticed it; among the others the kind tells slow (latency) from unusual (content:
    the members judging the whole record, whichever of them joins) from a metric series' change. The operation,
    route and message are not part of the pattern: measured on the simulator (docs/evaluation.md), an error
    burst touches every route of a service and a brute force every user name, and splitting by them made 15-20
    findings of one incident; each event names its records (`related_events`, `evidences`).
    """
    row, f = anomaly.row, anomaly.row.fields
    code = f.get("http_response.code")
    code = int(code) if isinstance(code, int | float) and not isinstance(code, bool) else 0
    outcome = "failed" if row.status_id == 2 or code >= 500 else "refused" if code >= 400 else "ok"
    fired = anomaly.detector.split("+")
    kind = (
        next((name for name in fired if name not in _CONTENT_MEMBERS), "content") if outcome == "ok" else ""
    )
    return (row.service, row.signal, outcome, kind)


@dataclass(slots=True)
class _Finding:
    uid: str
    pattern_uid: str
    first_seen_ms: int
    last_seen_ms: int
    latest: Anomaly
    count: int = 0
    reported: int = 0  # count as of its last event
    events: int = 0
    period_start_ms: int = 0
    period_events: int = 0
    last_event_ms: int = 0
    sources: list[str] = field(default_factory=list)  # since its last event
    first_wall: float = field(
        default_factory=time.monotonic
    )  # when it began and last grew, by the wall clock:
    last_wall: float = field(default_factory=time.monotonic)  # waits end even when no later record arrives

    @property
    def pending(self) -> bool:
        return self.count > self.reported


class FindingAggregator:
    """Turns anomalies into the events to send (Create / Update), per pattern; thread-safe.

    `on_outcome(outcome, n)` counts: created, updated (events sent), aggregated (anomalies folded into a later
    event), rate_limited (events held back by the global bound, sent later).
    """

    def __init__(
        self, limits: EventLimits, version: str, on_outcome: Callable[[str, int], None] | None = None
    ) -> None:
        self.limits, self.version = limits, version
        self._window_ms = int(limits.window_s * 1000)
        self._gap_ms = self._window_ms // limits.max_per_window
        self._wait_ms = int(limits.wait_s * 1000)
        self._open: dict[tuple[str, ...], _Finding] = {}
        self._folded: OrderedDict[str, AnomalyEvent] = OrderedDict()  # anomaly uid -> its stored event
        self._minute: tuple[int, int] = (-1, 0)  # (event-time minute, events sent in it)
        self._clock_ms = 0
        self._lock = threading.Lock()
        self._on_outcome = on_outcome

    @property
    def open_findings(self) -> int:
        return len(self._open)

    def add(self, anomalies: Sequence[Anomaly]) -> tuple[list[AnomalyEvent], list[AnomalyEvent]]:
        """Fold anomalies into their findings.

        Returns:
            (stored, send): every anomaly's event as it is stored (with its finding's uid and count), and the
            events to send now (Creates, Updates, closing Updates of findings this batch's time closed).
        """
        stored: list[AnomalyEvent] = []
        send: list[AnomalyEvent] = []
        with self._lock:
            for anomaly in sorted(anomalies, key=lambda a: a.row.time_unix_nano):
                uid = anomaly_uid(anomaly)
                known = self._folded.get(uid)
                if known is not None:  # folded before, its store failed: the same event, counted once
                    stored.append(known)
                    continue
                if self._window_ms == 0:  # no aggregation: each anomaly its own finding
                    own = self._remember(uid, AnomalyEvent.of(anomaly, self.version))
                    stored.append(own)
                    send.append(own)
                    self._count("created", 1)
                    continue
                t = anomaly.row.time_ms
                self._clock_ms = max(self._clock_ms, t)
                key = pattern_key(anomaly)
                f = self._open.get(key)
                if f is not None and t - f.last_seen_ms > self._window_ms:
                    send += self._close(key, f, force=True)
                    f = None
                if f is None:
                    f = self._new(key, anomaly)
                f.count += 1
                f.last_wall = time.monotonic()
                f.latest = anomaly if t >= f.last_seen_ms else f.latest
                f.first_seen_ms, f.last_seen_ms = min(f.first_seen_ms, t), max(f.last_seen_ms, t)
                if len(f.sources) < _MAX_PENDING_SOURCES:
                    f.sources.append(anomaly.row.uid)
                stored.append(
                    self._remember(
                        uid, AnomalyEvent.of(anomaly, self.version, self._occurrence(f, related=False))
                    )
                )
                event = self._maybe_send(f, t)
                if event is not None:
                    send.append(event)
                else:
                    self._count("aggregated", 1)
            if self._window_ms:
                send += self._sweep()
        return stored, send

    def _remember(self, uid: str, event: AnomalyEvent) -> AnomalyEvent:
        self._folded[uid] = event
        if len(self._folded) > _MAX_FOLDED:
            self._folded.popitem(last=False)
        return event

    def tick(self) -> list[AnomalyEvent]:
        """The events due by the wall clock alone (the emitter calls it every second, traffic or not)."""
        if self._window_ms == 0:
            return []
        with self._lock:
            return self._sweep()

    def advance(self, time_ms: int) -> list[AnomalyEvent]:
        """Move the clock to a batch's latest record time; the closing Updates (and held-back events) now due."""
        if self._window_ms == 0:
            return []
        with self._lock:
            self._clock_ms = max(self._clock_ms, time_ms)
            return self._sweep()

    def flush(self) -> list[AnomalyEvent]:
        """At shutdown: the last event of every finding with anomalies not yet reported (no rate bound)."""
        with self._lock:
            out = [self._event(f) for f in self._open.values() if f.pending]
            self._open.clear()
        return out

    # -- internals (under the lock)

    def _new(self, key: tuple[str, ...], anomaly: Anomaly) -> _Finding:
        if len(self._open) >= _MAX_OPEN:  # bounded memory: the quietest finding ends early
            quiet = min(self._open, key=lambda k: self._open[k].last_seen_ms)
            del self._open[quiet]
        t = anomaly.row.time_ms
        pattern_uid = content_uid("pattern", *key)
        f = _Finding(content_uid("finding", pattern_uid, t), pattern_uid, t, t, anomaly, period_start_ms=t)
        self._open[key] = f
        return f

    def _maybe_send(self, f: _Finding, t: int) -> AnomalyEvent | None:
        """The event this anomaly triggers now, if any (Create first; Updates within the per-window budget)."""
        if f.events:
            if t - f.period_start_ms >= self._window_ms:
                f.period_start_ms, f.period_events = t, 0
            if f.period_events >= self.limits.max_per_window or t - f.last_event_ms < self._gap_ms:
                return None
        elif not self._waited(f, time.monotonic()):
            return None  # the Create waits for the first repeats (sent by _sweep once the wait is over)
        if not self._take_budget():
            self._count("rate_limited", 1)
            return None
        return self._emit(f, t)

    def _emit(self, f: _Finding, t: int) -> AnomalyEvent:
        f.period_events += 1
        f.last_event_ms = t
        return self._event(f)

    def _sweep(self) -> list[AnomalyEvent]:
        """Close quiet findings (a last Update if they have unreported anomalies); send the Creates whose wait is
        over (or that the global bound held back). A wait or a quiet window ends by the records' time or, when
        no later record comes, by the wall clock."""
        out: list[AnomalyEvent] = []
        now = time.monotonic()
        for key, f in list(self._open.items()):
            if self._clock_ms - f.last_seen_ms > self._window_ms or now - f.last_wall > self.limits.window_s:
                out += self._close(key, f, force=False)
            elif not f.events and self._waited(f, now) and self._take_budget():
                out.append(self._emit(f, self._clock_ms))
        return out

    def _waited(self, f: _Finding, now: float) -> bool:
        return self._clock_ms - f.first_seen_ms >= self._wait_ms or now - f.first_wall >= self.limits.wait_s

    def _close(self, key: tuple[str, ...], f: _Finding, *, force: bool) -> list[AnomalyEvent]:
        """End a finding; its closing Update when it has unreported anomalies and the budget allows (or `force`:
        the same pattern starts a new finding now, so this one's last word cannot wait)."""
        if not f.pending:
            del self._open[key]
            return []
        if not force and not self._take_budget():
            self._count("rate_limited", 1)
            return []  # stays open until a minute with room
        del self._open[key]
        return [self._event(f)]

    def _event(self, f: _Finding) -> AnomalyEvent:
        event = AnomalyEvent.of(f.latest, self.version, self._occurrence(f, related=True))
        self._count("updated" if f.events else "created", 1)
        f.events += 1
        f.reported = f.count
        f.sources = []
        return event

    def _occurrence(self, f: _Finding, *, related: bool) -> Occurrence:
        return Occurrence(
            f.uid,
            2 if f.events else 1,
            f.count,
            f.first_seen_ms,
            f.last_seen_ms,
            f.pattern_uid,
            tuple(f.sources) if related else (f.latest.row.uid,),
        )

    def _take_budget(self) -> bool:
        minute = self._clock_ms // 60_000
        if minute != self._minute[0]:
            self._minute = (minute, 0)
        if self._minute[1] >= self.limits.max_per_minute:
            return False
        self._minute = (minute, self._minute[1] + 1)
        return True

    def _count(self, outcome: str, n: int) -> None:
        if self._on_outcome is not None and n:
            self._on_outcome(outcome, n)
