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


def _size(wl: Workload, median_kb: float) -> int:
    return int(wl.rng.lognormvariate(math.log(median_kb * 1024), 0.35))


def _session(wl: Workload, req: Req) -> Work:
    def validate(span: SpanRec, t: int) -> tuple[int, str]:
        def work(server: SpanRec, t0: int) -> tuple[int, str]:
            if req.visitor.user is not None:
                server.attributes["user.name"] = req.visitor.user.name
            if wl.rng.random() < 0.1:
                t0, status = db(wl, req, server, "SELECT", "sessions", t0 + wl.lat(req, server, 0.3))
                if status:
                    return t0, status
            return t0 + wl.lat(req, server, 0.8), ""

        return rpc(wl, req, span, "auth", "shop.auth.SessionService/ValidateSession", t, work)

    return validate


def _inventory(wl: Workload, req: Req, method: str, median_ms: float, *calls: Work) -> Work:
    return lambda span, t: rpc(
        wl, req, span, "inventory", f"shop.inventory.{method}", t, steps(wl, req, median_ms, *calls)
    )


def _query(wl: Workload, req: Req, op: str, table: str, rows: int = 1, median_ms: float = 1.8) -> Work:
    return lambda span, t: db(wl, req, span, op, table, t, rows, median_ms)


# ------------------------------------------------------------------------------------------------ routes
def _browse(wl: Workload, req: Req, call: Work) -> list[Work]:
    """Logged-in pages check the session with auth unless the frontend's session cache still has it."""
    return ([_session(wl, req)] if req.visitor.user and wl.rng.random() < 0.5 else []) + [call]


def home(wl: Workload, req: Req, t: int) -> SpanRec:
    span = root(wl, req, t, "GET", "/", "/")
    end, status = steps(
        wl,
        req,
        2.0,
        *_browse(
            wl,
            req,
            _inventory(
                wl, req, "CatalogService/ListFeatured", 3.0, _query(wl, req, "SELECT", "products", 12)
            ),
        ),
    )(span, t)
    return finish(wl, req, span, end, status, _size(wl, 46))


def product(wl: Workload, req: Req, t: int) -> SpanRec:
    pid = wl.product()
    span = root(wl, req, t, "GET", "/products/{id}", f"/products/{pid}")

    def lookup(server: SpanRec, t0: int) -> tuple[int, str]:
        server.attributes["app.product.id"] = pid
        if wl.rng.random() < 0.01:
            return t0 + wl.lat(req, server, 1.0), "notfound"
        if wl.rng.random() < 0.8:
            return t0 + wl.lat(req, server, 1.2), ""
        if wl.rng.random() < 0.15:
            server.logs.append(
                LogRec(
                    t0,
                    "inventory",
                    WARN,
                    f"cache miss for product {pid}, loading from database",
                    {"app.product.id": pid, "cache.name": "products"},
                )
            )
        return steps(wl, req, 2.0, _query(wl, req, "SELECT", "products"))(server, t0)

    end, status = steps(
        wl,
        req,
        2.0,
        *_browse(
            wl,
            req,
            lambda s, t0: rpc(
                wl, req, s, "inventory", "shop.inventory.CatalogService/GetProduct", t0, lookup
            ),
        ),
    )(span, t)
    return finish(wl, req, span, end, status, _size(wl, 28))


def search(wl: Workload, req: Req, t: int) -> SpanRec:
    term = wl.rng.choice(SEARCH_TERMS)
    span = root(wl, req, t, "GET", "/api/search", "/api/search", "q=" + term.replace(" ", "+"))
    rows = wl.rng.randrange(0, 60)

    def find(server: SpanRec, t0: int) -> tuple[int, str]:
        end, status = steps(wl, req, 4.0, _query(wl, req, "SELECT", "products", rows, 6.0))(server, t0)
        if not status:
            server.logs.append(
                LogRec(
                    end,
                    "inventory",
                    INFO,
                    f"search {term!r} returned {rows} products",
                    {"app.search.term": term, "app.search.results": rows},
                )
            )
        return end, status

    end, status = steps(
        wl,
        req,
        1.5,
        *_browse(
            wl,
            req,
            lambda s, t0: rpc(
                wl, req, s, "inventory", "shop.inventory.CatalogService/SearchProducts", t0, find
            ),
        ),
    )(span, t)
    return finish(wl, req, span, end, status, 800 + rows * _size(wl, 0.4))


def cart_view(wl: Workload, req: Req, t: int) -> SpanRec:
    span = root(wl, req, t, "GET", "/cart", "/cart")
    calls = ([_session(wl, req)] if req.visitor.user else []) + [
        _inventory(
            wl, req, "CartService/GetCart", 2.0, _query(wl, req, "SELECT", "cart_items", wl.rng.randrange(6))
        )
    ]
    end, status = steps(wl, req, 1.5, *calls)(span, t)
    return finish(wl, req, span, end, status, _size(wl, 9))


def cart_add(wl: Workload, req: Req, t: int) -> SpanRec:
    pid, quantity = wl.product(), wl.rng.choice((1, 1, 1, 2, 3))
    span = root(wl, req, t, "POST", "/cart", "/cart")

    def add(server: SpanRec, t0: int) -> tuple[int, str]:
        end, status = steps(wl, req, 2.0, _query(wl, req, "INSERT", "cart_items"))(server, t0)
        if not status:
            server.logs.append(
                LogRec(
                    end,
                    "inventory",
                    INFO,
                    f"added product {pid} x{quantity} to cart",
                    {"app.product.id": pid, "app.cart.quantity": quantity},
                )
            )
        return end, status

    calls = ([_session(wl, req)] if req.visitor.user else []) + [
        lambda s, t0: rpc(wl, req, s, "inventory", "shop.inventory.CartService/AddItem", t0, add)
    ]
    end, status = steps(wl, req, 1.5, *calls)(span, t)
    return finish(wl, req, span, end, status, _size(wl, 1.2))


def checkout(wl: Workload, req: Req, t: int) -> SpanRec:
    span = root(wl, req, t, "POST", "/checkout", "/checkout")
    end, status = steps(
        wl,
        req,
        2.0,
        _session(wl, req),
        _inventory(wl, req, "StockService/Reserve", 2.5, _query(wl, req, "UPDATE", "stock", 3)),
        lambda s, t0: rpc(
            wl,
            req,
            s,
            "payments",
            "shop.payments.PaymentService/Charge",
            t0,
            lambda server, t1: _charge(wl, req, server, t1),
        ),
    )(span, t)
    return finish(wl, req, span, end, status, _size(wl, 3))


def _charge(wl: Workload, req: Req, server: SpanRec, t: int) -> tuple[int, str]:
    rng = wl.rng
    order, total = wl.next_order_id(), round(rng.lognormvariate(math.log(45), 0.7), 2)
    attempts = 2 if rng.random() < 0.02 else 1
    t += wl.lat(req, server, 1.5)
    for attempt in range(1, attempts + 1):
        call = SpanRec(
            "payments",
            "POST",
            "client",
            t,
            attributes={
                "http.request.method": "POST",
                "url.full": "https://api.psp.example.net/v1/charges",
                "server.address": "api.psp.example.net",
                "server.port": 443,
            },
        )
        server.children.append(call)
        timed_out = attempt < attempts
        call.end_ns = t + (2000 * MS if timed_out else wl.lat(req, call, 180, 0.5))
        call.attributes["http.response.status_code"] = 0 if timed_out else 200
        if timed_out:
            call.error, call.attributes["error.type"] = "timeout", "timeout"
            del call.attributes["http.response.status_code"]
            server.logs.append(
                LogRec(
                    call.end_ns,
                    "payments",
                    WARN,
                    f"charge call to provider timed out after 2000 ms, retrying (attempt {attempt + 1}/3)",
                    {"app.order.id": order},
                )
            )
        t = call.end_ns
    if rng.random() < 0.02:
        server.logs.append(
            LogRec(
                t,
                "payments",
                WARN,
                f"card declined for order {order}",
                {"app.order.id": order, "payment.decline_code": "insufficient_funds"},
            )
        )
        return t + wl.lat(req, server, 0.5), "declined"
    t, status = db(wl, req, server, "INSERT", "orders", t)
    if not status:
        server.logs.append(
            LogRec(
                t,
                "payments",
                INFO,
                f"order {order} placed total={total:.2f} EUR",
                {"app.order.id": order, "app.order.total": total, "app.order.currency": "EUR"},
            )
        )
    return t + wl.lat(req, server, 0.5), status


def login(wl: Workload, req: Req, t: int) -> SpanRec:
    v = req.visitor
    span = root(wl, req, t, "POST", "/login", "/login")
    span.attributes.pop("user.name", None)

    def check(server: SpanRec, t0: int) -> tuple[int, str]:
        user = v.user.name if v.user else v.login_name
        server.attributes["user.name"] = user
        end, status = db(wl, req, server, "SELECT", "users", t0 + wl.lat(req, server, 0.5))
        if status:
            return end, status
        end += wl.lat(req, server, 35, 0.2)  # password hashing dominates
        known = any(u.name == user for u in wl.users)
        ok = v.user is not None and wl.rng.random() < 0.94
        reason = "invalid password" if known else "unknown user"
        server.attributes["auth.result"] = "success" if ok else "failure"
        attrs = {
            "user.name": user,
            "client.address": v.ip,
            "user_agent.original": v.agent,
            "client.geo.country.iso_code": v.country,
            "auth.result": "success" if ok else "failure",
        }
        body = f"user {user} logged in from {v.ip}" if ok else f"login failed for user {user}: {reason}"
        server.logs.append(LogRec(end, "auth", INFO if ok else WARN, body, attrs))
        if req.forced:
            server.label = req.kind
        return end, "" if ok else "unauthorized"

    end, status = rpc(wl, req, span, "auth", "shop.auth.AuthService/Login", t + wl.lat(req, span, 1.0), check)
    return finish(wl, req, span, end, status, _size(wl, 0.6))


def export(wl: Workload, req: Req, t: int) -> SpanRec:
    span = root(wl, req, t, "GET", "/api/export", "/api/export", "format=csv")
    ep = req.episode if req.forced else None
    factor = ep.factor * wl.rng.uniform(0.7, 1.3) if ep else 1.0
    rows = int(wl.rng.lognormvariate(math.log(250), 0.4) * factor)

    def dump(server: SpanRec, t0: int) -> tuple[int, str]:
        end, status = db(wl, req, server, "SELECT", "orders", t0, rows, 3.0 * math.sqrt(factor))
        if ep is not None:
            server.children[-1].label = server.label = ep.kind
        return end + int(rows * 0.004 * MS), status

    end, status = steps(
        wl,
        req,
        1.5,
        _session(wl, req),
        lambda s, t0: rpc(wl, req, s, "inventory", "shop.inventory.OrderService/ExportOrders", t0, dump),
    )(span, t)
    return finish(wl, req, span, end, status, rows * wl.rng.randrange(150, 190))


def _admin(wl: Workload, req: Req, t: int, path: str) -> SpanRec:
    span = root(wl, req, t, "GET", path, path)
    user = req.visitor.user.name if req.visitor.user else ""

    def authorize(server: SpanRec, t0: int) -> tuple[int, str]:
        server.attributes.update({"user.name": user, "url.path": path})
        end = t0 + wl.lat(req, server, 1.0)
        server.logs.append(
            LogRec(
                end,
                "auth",
                INFO,
                f"admin access by {user}: GET {path}",
                {"user.name": user, "url.path": path, "client.address": req.visitor.ip},
            )
        )
        if req.forced:
            server.label = req.kind
        return end, ""

    calls = [lambda s, t0: rpc(wl, req, s, "auth", "shop.auth.AuthService/Authorize", t0, authorize)]
    if path == "/admin/users":
        calls.append(
            _inventory(wl, req, "AccountService/ListUsers", 2.0, _query(wl, req, "SELECT", "users", 60))
        )
    end, status = steps(wl, req, 1.5, *calls)(span, t)
    return finish(wl, req, span, end, status, _size(wl, 14 if path == "/admin/users" else 4))


FLOWS: dict[str, Callable[[Workload, Req, int], SpanRec]] = {
    "home": home,
    "product": product,
    "search": search,
    "cart_view": cart_view,
    "cart_add": cart_add,
    "checkout": checkout,
    "login": login,
    "export": export,
    "admin_users": lambda wl, req, t: _admin(wl, req, t, "/admin/users"),
    "admin_config": lambda wl, req, t: _admin(wl, req, t, "/admin/config"),
}
ANON_FLOWS, ANON_WEIGHTS = ("home", "product", "search", "cart_view", "cart_add"), (30, 42, 15, 4, 4)
USER_FLOWS = ("home", "product", "search", "cart_view", "cart_add", "checkout", "login", "export")
USER_WEIGHTS = (22, 36, 14, 9, 7, 4, 4, 0.4)
ADMIN_FLOWS, ADMIN_WEIGHTS = USER_FLOWS + ("admin_users", "admin_config"), USER_WEIGHTS + (2.0, 1.0)
