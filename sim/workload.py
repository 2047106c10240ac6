"""Simulated shop workload for `otad simulate`: users, request flows, metrics and the injected episodes.

Pure Python and seeded: it produces plain span/log/point records; `sim.simulate` turns them into OTel SDK
data and exports them. Anomaly labels live only on these records (`label`), never in their attributes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from sim import episodes, routes, world
from sim.flows import DURATION_BOUNDS, INFO
from sim.world import MS, SEC, Episode, LogRec, PointRec, Req, SpanRec, User, Visitor

__all__ = ["Workload"]


@dataclass(slots=True)
class _Series:
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BOUNDS) + 1))
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = 0.0


class Workload:
    """Generates one simulated time slice at a time; call `step(t0, t1)` with increasing times."""

    def __init__(
        self,
        rng: random.Random,
        start_ns: int,
        duration_s: float,
        rate: float,
        anomaly_rate: float,
        kinds: tuple[str, ...] = world.KINDS,
    ):
        self.rng = rng
        self.start_ns = start_ns
        self.rate = rate
        self.users: list[User] = world.make_users(rng)
        self.episodes: list[Episode] = episodes.plan_episodes(
            rng, self.users, start_ns, duration_s, anomaly_rate, kinds
        )
        self._user_weights = [u.weight for u in self.users]
        self.products = [rng.randrange(1000, 9999) for _ in range(400)]
        self._order_id = 5000 + rng.randrange(1000)
        self._mem = {s: world.SERVICES[s].memory * (1 + 0.02 * rng.gauss(0, 1)) for s in world.SERVICES}
        self._hist: dict[tuple[str, str], _Series] = {}
        self._status: dict[int, int] = {}
        # The frontend's request metrics aggregate requests; a point whose interval holds a request changed by
        # an episode carries that episode's label (its delta moved because of it).
        self._series_label: dict[object, str] = {}
        self._slice: list[SpanRec] = []
        self._logs: list[LogRec] = []
        self._next_checkpoint = start_ns + rng.randrange(60, 300) * SEC

    # ------------------------------------------------------------------------------------------ slices
    def step(self, t0: int, t1: int) -> tuple[list[SpanRec], list[LogRec], list[PointRec]]:
        """Requests arriving in [t0, t1) plus the metric points at t1, all in time order."""
        self._slice, self._logs = [], []
        arrivals: list[tuple[int, Req, str]] = []
        lam = self.rate * world.day_factor(t0)
        t = t0 + int(self.rng.expovariate(lam) * SEC)
        while t < t1:
            visitor = self._visitor()
            arrivals.append((t, Req(visitor), self._flow(visitor)))
            t += int(self.rng.expovariate(lam) * SEC)
        for ep in self.episodes:
            if ep.end_ns > t0 and ep.start_ns < t1:
                arrivals.extend(self._episode_requests(ep, t0, t1))
        arrivals.sort(key=lambda item: item[0])
        for t, req, flow in arrivals:
            self._request(t, req, flow)
        self._background_logs(t0, t1)
        points = self._points(t1)
        self._logs.sort(key=lambda log: log.time_ns)
        return self._slice, self._logs, points

    def active(self, t: int) -> Episode | None:
        for ep in self.episodes:
            if ep.start_ns <= t < ep.end_ns:
                return ep
        return None

    def _visitor(self) -> Visitor:
        rng = self.rng
        if rng.random() < 0.55:
            user = rng.choices(self.users, self._user_weights)[0]
            return world.usual_visitor(rng, user)
        return world.anonymous_visitor(rng)

    def _flow(self, visitor: Visitor) -> str:
        if visitor.user is None:
            return self.rng.choices(routes.ANON_FLOWS, routes.ANON_WEIGHTS)[0]
        if visitor.user.admin:
            return self.rng.choices(routes.ADMIN_FLOWS, routes.ADMIN_WEIGHTS)[0]
        return self.rng.choices(routes.USER_FLOWS, routes.USER_WEIGHTS)[0]

    def _episode_requests(self, ep: Episode, t0: int, t1: int) -> list[tuple[int, Req, str]]:
        out = []
        for t, flow in ep.events:
            if t0 <= t < t1:
                visitor = ep.visitor if ep.kind != "brute_force" else world.attacker_visitor(self.rng, ep)
                assert visitor is not None  # world._shape gives every episode with events a visitor
                out.append((t, Req(visitor, ep, forced=True), flow))
        return out

    # ---------------------------------------------------------------------------------------- requests
    def _request(self, t: int, req: Req, flow: str) -> None:
        ep = self.active(t)
        if ep is not None and not req.forced and ep.kind in world.REQUEST_KINDS:
            req.episode = ep
            req.spiked = ep.kind == "latency_spike" and self.rng.random() < ep.share
            req.failing = ep.kind == "error_rate_burst" and self.rng.random() < ep.share
            req.timing_out = ep.kind == "db_timeout_burst" and self.rng.random() < ep.share
        root = routes.FLOWS[flow](self, req, t)
        if req.forced:
            root.label = req.kind
        if req.kind is not None:
            _propagate(root)
        self._slice.append(root)
        key = (root.attributes["http.request.method"], root.attributes["http.route"])
        series = self._hist.setdefault(key, _Series())
        if root.label and req.episode is not None:
            self._series_label.setdefault(key, root.label)
        seconds = (root.end_ns - root.start_ns) / SEC
        series.bucket_counts[_bucket(seconds)] += 1
        series.count += 1
        series.total += seconds
        series.low, series.high = min(series.low, seconds), max(series.high, seconds)
        code = int(root.attributes["http.response.status_code"])
        self._status[code] = self._status.get(code, 0) + 1
        if root.label and req.episode is not None:
            self._series_label.setdefault(code, root.label)

    def lat(self, req: Req, span: SpanRec, median_ms: float, sigma: float = 0.45) -> int:
        """A log-normal processing time; ×10–30 for the slow service of a latency spike."""
        ms = median_ms * math.exp(sigma * self.rng.gauss(0, 1))
        ep = req.episode
        if req.spiked and ep is not None and ep.service == span.service:
            ms *= ep.factor * (0.8 + 0.4 * self.rng.random())
            span.label = ep.kind
        return int(ms * MS)

    def next_order_id(self) -> int:
        self._order_id += self.rng.randrange(1, 4)
        return self._order_id

    def product(self) -> int:
        return self.products[min(int(self.rng.paretovariate(1.1)) - 1, len(self.products) - 1)]

    def down(self, service: str, t: int) -> bool:
        """Whether a crash-looping service is between a crash and its restart at t."""
        ep = self.active(t)
        if ep is None or ep.kind != "crash_loop" or ep.service != service:
            return False
        return any(crash <= t < restart for crash, restart in ep.restarts)

    # ----------------------------------------------------------------------------------------- logs
    def _background_logs(self, t0: int, t1: int) -> None:
        if self._next_checkpoint < t1:
            buffers = self.rng.randrange(200, 4000)
            self._logs.append(
                LogRec(
                    self._next_checkpoint,
                    "postgres",
                    INFO,
                    f"checkpoint complete: wrote {buffers} buffers ({buffers / 1310.72:.1f}%); "
                    f"write={self.rng.uniform(2, 30):.3f} s",
                    {"db.system.name": "postgresql"},
                )
            )
            self._next_checkpoint += self.rng.randrange(240, 360) * SEC
        for ep in self.episodes:
            if ep.kind == "crash_loop" and ep.end_ns > t0 and ep.start_ns < t1:
                self._logs.extend(episodes.crash_logs(self.rng, ep, t0, t1))

    def emit(self, log: LogRec) -> None:
        """A log that belongs to no span (database server logs)."""
        self._logs.append(log)

    # -------------------------------------------------------------------------------------- metrics
    def _points(self, t: int) -> list[PointRec]:
        rng = self.rng
        load = world.day_factor(t) * self.rate / 20
        out: list[PointRec] = []
        for service, spec in world.SERVICES.items():
            self._mem[service] += spec.memory * 0.01 * rng.gauss(0, 1) - 0.2 * (
                self._mem[service] - spec.memory
            )
            memory, label = self._memory(service, t)
            out.append(
                PointRec(service, "process.memory.usage", "gauge", "By", {}, t, int(memory), label=label)
            )
            cpu = min(1.0, max(0.01, spec.cpu * (0.3 + 0.7 * load) * (1 + 0.1 * rng.gauss(0, 1))))
            out.append(PointRec(service, "process.cpu.utilization", "gauge", "1", {}, t, round(cpu, 4)))
        out.extend(self._db_points(t, load))
        for (method, route), s in sorted(self._hist.items()):
            attrs = {"http.request.method": method, "http.route": route}
            out.append(
                PointRec(
                    "frontend",
                    "http.server.request.duration",
                    "histogram",
                    "s",
                    attrs,
                    t,
                    (s.count, s.total, tuple(s.bucket_counts), s.low, s.high),
                    start_ns=self.start_ns,
                    label=self._series_label.get((method, route)),
                )
            )
        for code, count in sorted(self._status.items()):
            out.append(
                PointRec(
                    "frontend",
                    "http.server.requests",
                    "sum",
                    "{request}",
                    {"http.response.status_code": code},
                    t,
                    count,
                    start_ns=self.start_ns,
                    label=self._series_label.get(code),
                )
            )
        self._series_label.clear()
        return out

    def _memory(self, service: str, t: int) -> tuple[float, str | None]:
        value = self._mem[service]
        ep = self.active(t)
        if ep is None or ep.service != service:
            return value, None
        if ep.kind == "memory_leak":
            progress = (t - ep.start_ns) / (ep.end_ns - ep.start_ns)
            return value * (1 + (ep.factor - 1) * progress), ep.kind
        if ep.kind == "crash_loop":
            # A restarted process starts small and grows back; while it is down the last sample is tiny.
            last = max((e for pair in ep.restarts for e in pair if e <= t), default=ep.start_ns)
            return value * min(1.0, 0.15 + 0.03 * (t - last) / SEC), ep.kind
        return value, None

    def _db_points(self, t: int, load: float) -> list[PointRec]:
        pool = 100
        used = max(1, int(6 * load + 3 * self.rng.random() + self.rng.gauss(0, 1)))
        ep = self.active(t)
        label = None
        if ep is not None and ep.kind == "db_timeout_burst":
            used, label = pool - self.rng.randrange(0, 4), ep.kind
        attrs = {"db.client.connection.pool.name": "shop"}
        return [
            PointRec(
                "postgres",
                "db.client.connection.count",
                "gauge",
                "{connection}",
                {**attrs, "db.client.connection.state": "used"},
                t,
                used,
                label=label,
            ),
            PointRec(
                "postgres",
                "db.client.connection.count",
                "gauge",
                "{connection}",
                {**attrs, "db.client.connection.state": "idle"},
                t,
                pool - used,
                label=label,
            ),
        ]


def _bucket(seconds: float) -> int:
    for index, bound in enumerate(DURATION_BOUNDS):
        if seconds <= bound:
            return index
    return len(DURATION_BOUNDS)


def _propagate(span: SpanRec) -> str | None:
    """A span altered by an episode marks its ancestors (their latency or status changed) and its logs."""
    for child in span.children:
        found = _propagate(child)
        if found and span.label is None:
            span.label = found
    if span.label:
        for log in span.logs:
            log.label = span.label
    return span.label
