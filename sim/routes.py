"""The simulated shop's routes: one flow function per frontend route, built from the primitives of sim/flows.py."""

from __future__ import annotations

import math
from collections.abc import Callable

from sim.flows import INFO, SEARCH_TERMS, WARN, Work, Workload, db, finish, root, rpc, steps
from sim.world import MS, LogRec, Req, SpanRec


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


USER_FLOWS = ("home", "product", "search", "cart_view", "cart_add", "checkout", "login", "export")


USER_WEIGHTS = (22, 36, 14, 9, 7, 4, 4, 0.4)
ANON_FLOWS, ANON_WEIGHTS = ("home", "product", "search", "cart_view", "cart_add"), (30, 42, 15, 4, 4)
ADMIN_FLOWS, ADMIN_WEIGHTS = USER_FLOWS + ("admin_users", "admin_config"), USER_WEIGHTS + (2.0, 1.0)
