"""Request flows of the simulated shop: one function per frontend route, building a span tree with its logs.

Each flow starts a frontend SERVER span, calls auth / inventory / payments over gRPC (a CLIENT span in the caller
and a SERVER span in the callee) and PostgreSQL (CLIENT spans), and ends with an access log. A status string
travels back up the calls: "" for success, otherwise a key of HTTP_STATUS.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sim.world import MS, LogRec, Req, SpanRec, World

Workload = World  # what a flow needs of the workload (sim.workload.Workload implements it)

INFO, WARN, ERROR, FATAL = 9, 13, 17, 21
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
HTTP_STATUS = {
    "": 200,
    "notfound": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "declined": 402,
    "internal": 500,
    "upstream": 502,
    "unavailable": 503,
    "timeout": 504,
}
RPC_STATUS = {
    "": "OK",
    "notfound": "NOT_FOUND",
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "declined": "FAILED_PRECONDITION",
    "internal": "INTERNAL",
    "upstream": "UNAVAILABLE",
    "unavailable": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
}
SERVER_ERRORS = frozenset({"internal", "upstream", "unavailable", "timeout"})
SEARCH_TERMS = (
    "running shoes",
    "rain jacket",
    "espresso",
    "usb-c cable",
    "backpack",
    "desk lamp",
    "yoga mat",
    "headphones",
    "winter gloves",
    "coffee grinder",
    "water bottle",
    "phone case",
)
Work = Callable[[SpanRec, int], tuple[int, str]]


def _traceback(kind: str, message: str, where: str) -> str:
    return (
        f'Traceback (most recent call last):\n  File "/app/{where}/handlers.py", line 212, in handle\n'
        f'    result = await self.service.run(request)\n  File "/app/{where}/service.py", line 88, in run\n'
        f"    return self._apply(request)\n{kind}: {message}"
    )


# ------------------------------------------------------------------------------------------------ building blocks
def rpc(
    wl: Workload, req: Req, parent: SpanRec, callee: str, method: str, t: int, work: Work
) -> tuple[int, str]:
    """A gRPC call from parent's service to callee; returns (end time, status)."""
    rng = wl.rng
    attrs = {"rpc.system.name": "grpc", "rpc.method": method, "server.address": callee, "server.port": 50051}
    client = SpanRec(parent.service, method, "client", t, attributes=attrs)
    parent.children.append(client)
    net = int(rng.lognormvariate(math.log(0.4), 0.3) * MS)
    if wl.down(callee, t):
        client.end_ns = t + net + int(rng.uniform(0.3, 1.5) * MS)
        client.label = req.kind
        return _close(client, "unavailable", "connection refused"), "unavailable"
    if rng.random() < 0.002:  # rare benign failure: a connection reset under the pod's feet
        client.end_ns = t + net + int(rng.uniform(1, 30) * MS)
        client.logs.append(
            LogRec(
                client.end_ns,
                parent.service,
                ERROR,
                f"{method} failed: connection reset by peer",
                {
                    "exception.type": "ConnectionResetError",
                    "exception.message": "[Errno 104] Connection reset by peer",
                    "rpc.method": method,
                },
            )
        )
        return _close(client, "upstream", "connection reset by peer"), "upstream"
    server = SpanRec(
        callee, method, "server", t + net, attributes={"rpc.system.name": "grpc", "rpc.method": method}
    )
    client.children.append(server)
    ep = req.episode
    if req.failing and ep is not None and ep.service == callee:
        end = server.start_ns + wl.lat(req, server, 2.0)
        kind, message = ep.reason.split(": ", 1)
        server.logs.append(
            LogRec(
                end,
                callee,
                ERROR,
                f"{method} failed: {ep.reason}",
                {
                    "exception.type": kind,
                    "exception.message": message,
                    "rpc.method": method,
                    "exception.stacktrace": _traceback(kind, message, callee),
                },
            )
        )
        server.label, status = ep.kind, "internal"
    else:
        end, status = work(server, server.start_ns)
    server.end_ns = end
    _close(server, status, RPC_STATUS[status])
    client.end_ns = end + net
    return _close(client, status, RPC_STATUS[status]), status


def _close(span: SpanRec, status: str, message: str) -> int:
    span.attributes["rpc.response.status_code"] = RPC_STATUS[status]
    if status in SERVER_ERRORS:
        span.error, span.attributes["error.type"] = message, RPC_STATUS[status]
    return span.end_ns


def db(
    wl: Workload,
    req: Req,
    parent: SpanRec,
    op: str,
    table: str,
    t: int,
    rows: int = 1,
    median_ms: float = 1.8,
) -> tuple[int, str]:
    """A PostgreSQL query from parent's service; the first query of a timing-out request hits the 5 s timeout."""
    summary = f"{op} {table}"
    attrs = {
        "db.system.name": "postgresql",
        "db.namespace": "shop",
        "db.operation.name": op,
        "db.collection.name": table,
        "db.query.summary": summary,
        "server.address": "postgres",
        "server.port": 5432,
    }
    span = SpanRec(parent.service, summary, "client", t, attributes=attrs)
    parent.children.append(span)
    if req.timing_out:
        req.timing_out = False
        span.end_ns = t + int((5000 + wl.rng.uniform(0, 15)) * MS)
        span.error, span.label = "canceling statement due to statement timeout", req.kind
        attrs.update({"db.response.status_code": "57014", "error.type": "57014"})
        parent.logs.append(
            LogRec(
                span.end_ns,
                parent.service,
                ERROR,
                f"query timeout after 5000 ms: {summary}",
                {
                    "db.system.name": "postgresql",
                    "db.query.summary": summary,
                    "exception.type": "QueryCanceled",
                },
            )
        )
        wl.emit(
            LogRec(
                span.end_ns,
                "postgres",
                ERROR,
                "canceling statement due to statement timeout",
                {
                    "db.system.name": "postgresql",
                    "db.query.summary": summary,
                    "db.response.status_code": "57014",
                },
                req.kind,
            )
        )
        return span.end_ns, "timeout"
    span.end_ns = t + wl.lat(req, span, median_ms * (1 + rows / 400), 0.6)
    attrs["db.response.returned_rows"] = rows
    took = (span.end_ns - t) / MS
    if took > 250:
        wl.emit(
            LogRec(
                span.end_ns,
                "postgres",
                INFO,
                f"duration: {took:.3f} ms  statement: {summary}",
                {"db.system.name": "postgresql", "db.query.summary": summary},
            )
        )
    return span.end_ns, ""


def steps(wl: Workload, req: Req, median_ms: float, *calls: Work) -> Work:
    """A handler that runs calls one after another, stopping at the first failure, plus its own work."""

    def run(span: SpanRec, t: int) -> tuple[int, str]:
        t += wl.lat(req, span, median_ms / 2)
        for call in calls:
            t, status = call(span, t)
            if status:
                return t + int(0.3 * MS), status
        return t + wl.lat(req, span, median_ms / 2), ""

    return run


def root(wl: Workload, req: Req, t: int, method: str, route: str, path: str, query: str = "") -> SpanRec:
    v = req.visitor
    attrs = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": "https",
        "http.route": route,
        "server.address": "shop.example.com",
        "client.address": v.ip,
        "user_agent.original": v.agent,
        "network.protocol.version": "1.1",
    }
    if query:
        attrs["url.query"] = query
    if v.user is not None:
        attrs["user.name"] = v.user.name
    return SpanRec("frontend", f"{method} {route}", "server", t, attributes=attrs)


def finish(wl: Workload, req: Req, span: SpanRec, t: int, status: str, size: int) -> SpanRec:
    """Ends the frontend span at t (+ own time) and writes the access log."""
    code = HTTP_STATUS[status]
    size = size if code < 400 else wl.rng.randrange(90, 400)
    span.end_ns = t + wl.lat(req, span, 1.5)
    a = span.attributes
    a["http.response.status_code"], a["http.response.body.size"] = code, size
    if code >= 500:
        span.error, a["error.type"] = "", str(code)
    took = (span.end_ns - span.start_ns) / MS
    log_attrs = {
        k: a[k]
        for k in (
            "http.request.method",
            "url.path",
            "http.route",
            "http.response.status_code",
            "client.address",
            "user_agent.original",
            "http.response.body.size",
        )
    }
    if "user.name" in a:
        log_attrs["user.name"] = a["user.name"]
    log_attrs["http.server.request.duration"] = round(took / 1000, 6)
    target = a["url.path"] + ("?" + a["url.query"] if "url.query" in a else "")
    body = (
        f'{a["client.address"]} - {a.get("user.name", "-")} "{a["http.request.method"]} {target} HTTP/1.1" '
        f"{code} {size} {took:.1f}ms"
    )
    span.logs.append(LogRec(span.end_ns, "frontend", ERROR if code >= 500 else INFO, body, log_attrs))
    return span
