"""Anomaly episodes of the simulated shop: when each kind happens, whom it touches, and the logs a crash loop writes."""

from __future__ import annotations

import random

from sim.world import (
    ATTACK_PREFIXES,
    ATTACK_USER_AGENTS,
    MS,
    SEC,
    SERVICES,
    UNSEEN_COUNTRIES,
    UNSEEN_USER_AGENTS,
    Episode,
    LogRec,
    User,
    Visitor,
    usual_visitor,
)

# A leak needs time to grow, a crash loop several restarts, a brute force enough attempts to be one.
_MIN_LENGTH = {"memory_leak": 120.0, "crash_loop": 60.0, "brute_force": 45.0}


# ------------------------------------------------------------------------------------------------ episodes
def plan_episodes(
    rng: random.Random,
    users: list[User],
    start_ns: int,
    duration_s: float,
    anomaly_rate: float,
    kinds: tuple[str, ...],
) -> list[Episode]:
    """Episodes spread over the run (never in its first 10%), non-overlapping, ~anomaly_rate of the time."""
    window = 0.9 * duration_s
    budget = anomaly_rate * duration_s
    if not kinds or budget < 30 or window < 60:
        return []
    count = max(len(kinds), round(budget / 120)) if budget >= 30 * len(kinds) else int(budget // 30)
    order = list(kinds)
    rng.shuffle(order)
    order = [order[i % len(order)] for i in range(count)]
    lengths = [rng.uniform(30, 300) for _ in order]
    scale = budget / sum(lengths)
    segment = window / count
    episodes = []
    for index, (kind, raw) in enumerate(zip(order, lengths, strict=True)):
        length = min(max(_MIN_LENGTH.get(kind, 30.0), raw * scale), 300.0, 0.9 * segment)
        begin = 0.1 * duration_s + index * segment + rng.uniform(0, segment - length)
        t0 = start_ns + int(begin * SEC)
        ep = Episode(kind, t0, t0 + int(length * SEC))
        _shape(rng, ep, users)
        episodes.append(ep)
    return episodes


def _spread(rng: random.Random, ep: Episode, n: int, flows: tuple[str, ...]) -> list[tuple[int, str]]:
    times = sorted(rng.randrange(ep.start_ns, ep.end_ns) for _ in range(n))
    return [(t, rng.choice(flows)) for t in times]


def _shape(rng: random.Random, ep: Episode, users: list[User]) -> None:
    normal = [u for u in users if not u.admin]
    kind = ep.kind
    if kind in ("latency_spike", "error_rate_burst"):  # services on most requests' path
        ep.service = rng.choice(("inventory", "inventory", "auth"))
    elif kind in ("memory_leak", "crash_loop"):
        ep.service = rng.choice(("inventory", "inventory", "auth", "payments"))
    if kind == "latency_spike":
        ep.share, ep.factor = rng.uniform(0.6, 0.9), rng.uniform(10, 30)
    elif kind == "db_timeout_burst":
        ep.service, ep.share = "postgres", rng.uniform(0.4, 0.7)
    elif kind == "error_rate_burst":
        ep.share = rng.uniform(0.5, 0.9)
        ep.reason = rng.choice(
            (
                "KeyError: 'sku'",
                "AttributeError: 'NoneType' object has no attribute 'currency'",
                "ValueError: invalid literal for int() with base 10: ''",
            )
        )
    elif kind == "memory_leak":
        ep.factor = rng.uniform(3, 5)
    elif kind == "crash_loop":
        ep.reason = rng.choice(
            (
                "failed to load config: missing key 'db.pool.size'",
                "cannot bind :50051: address already in use",
                "out of memory: cannot allocate 268435456 bytes",
            )
        )
        t = ep.start_ns + rng.randrange(1, 5) * SEC
        while t < ep.end_ns - 5 * SEC:
            restart = min(t + rng.randrange(5, 16) * SEC, ep.end_ns - SEC)
            ep.restarts.append((t, restart))
            t = restart + rng.randrange(3, 11) * SEC
    elif kind == "brute_force":
        ip = f"{rng.choice(ATTACK_PREFIXES)}.{rng.randrange(1, 255)}.{rng.randrange(0, 255)}.{rng.randrange(2, 254)}"
        ep.visitor = Visitor(None, ip, rng.choice(ATTACK_USER_AGENTS), rng.choice(UNSEEN_COUNTRIES))
        ep.targets = tuple(u.name for u in rng.sample(users, 5)) + ("admin", "root", "test")
        seconds = (ep.end_ns - ep.start_ns) / SEC
        ep.events = _spread(rng, ep, int(seconds * rng.uniform(4.0, 10.0)), ("login",))
    elif kind == "new_geo_user_agent":
        user = rng.choice(normal)
        ip = f"{rng.choice(ATTACK_PREFIXES)}.{rng.randrange(1, 255)}.{rng.randrange(0, 255)}.{rng.randrange(2, 254)}"
        ep.visitor = Visitor(user, ip, rng.choice(UNSEEN_USER_AGENTS), rng.choice(UNSEEN_COUNTRIES))
        ep.events = [(ep.start_ns + rng.randrange(0, 5) * SEC, "login")]
        ep.events += _spread(
            rng, ep, rng.randrange(6, 20), ("home", "product", "product", "search", "cart_view")
        )
        ep.events.sort()
    elif kind == "data_exfiltration":
        ep.visitor = usual_visitor(rng, rng.choice(normal))
        ep.factor = rng.uniform(100, 1000)
        ep.events = _spread(rng, ep, rng.randrange(5, 25), ("export",))
    elif kind == "admin_endpoint":
        ep.visitor = usual_visitor(rng, rng.choice(normal))
        ep.events = _spread(rng, ep, rng.randrange(3, 10), ("admin_users", "admin_config"))


def crash_logs(rng: random.Random, ep: Episode, t0: int, t1: int) -> list[LogRec]:
    """The crash-looping service's own logs in [t0, t1): a fatal exit at each crash, start-up lines at restarts."""
    spec = SERVICES[ep.service]
    out = []
    for crash, restart in ep.restarts:
        if t0 <= crash < t1:
            out.append(
                LogRec(
                    crash,
                    ep.service,
                    17,
                    f"unhandled error during start-up: {ep.reason}",
                    {"exception.type": "RuntimeError", "exception.message": ep.reason},
                    ep.kind,
                )
            )
            out.append(
                LogRec(
                    crash + MS,
                    ep.service,
                    21,
                    f"fatal: {ep.reason}, exiting",
                    {"process.exit.code": 1},
                    ep.kind,
                )
            )
        if t0 <= restart < t1 and restart < ep.end_ns:
            pid = rng.randrange(7, 400)
            out.append(
                LogRec(
                    restart,
                    ep.service,
                    9,
                    f"starting {ep.service} service v{spec.version} (pid {pid})",
                    {"service.version": spec.version},
                    ep.kind,
                )
            )
    return out
