"""The simulated shop for `otad simulate`: record types, services, users and the plan of injected episodes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

SEC = 1_000_000_000
MS = 1_000_000
DAY_S = 86_400

KINDS = (
    "latency_spike",
    "db_timeout_burst",
    "error_rate_burst",
    "memory_leak",
    "brute_force",
    "new_geo_user_agent",
    "data_exfiltration",
    "admin_endpoint",
    "crash_loop",
)
# Kinds that alter ordinary requests (the others add requests of their own or only touch metrics and logs).
REQUEST_KINDS = frozenset({"latency_spike", "db_timeout_burst", "error_rate_burst", "crash_loop"})
# A histogram point's value: (count, sum, bucket_counts, min, max).
HistogramValue = tuple[int, float, tuple[int, ...], float, float]


@dataclass(slots=True)
class LogRec:
    time_ns: int
    service: str
    severity: int  # OTel severity number
    body: str
    attributes: dict
    label: str | None = None  # the episode kind when this record carries an injected anomaly


@dataclass(slots=True)
class SpanRec:
    service: str
    name: str
    kind: str  # server | client | internal
    start_ns: int
    end_ns: int = 0
    attributes: dict = field(default_factory=dict)
    error: str | None = None  # status description when the span failed
    children: list[SpanRec] = field(default_factory=list)
    logs: list[LogRec] = field(default_factory=list)  # emitted inside this span (share its trace context)
    label: str | None = None


@dataclass(slots=True)
class PointRec:
    service: str
    name: str
    kind: str  # gauge | sum | histogram
    unit: str
    attributes: dict
    time_ns: int
    value: float | HistogramValue  # a number (int or float); a tuple for histograms
    start_ns: int = 0
    label: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    version: str
    host: str
    memory: float  # bytes, typical resident size
    cpu: float  # utilization at the daily peak


SERVICES = {
    "frontend": ServiceSpec("1.14.2", "frontend-6d8f7b9c4-x2k9p", 310e6, 0.42),
    "auth": ServiceSpec("3.2.0", "auth-5c7d9f8b6-q7m4t", 180e6, 0.18),
    "inventory": ServiceSpec("2.8.1", "inventory-7b6c5d4f9-h3j8w", 420e6, 0.31),
    "payments": ServiceSpec("4.0.3", "payments-84f6b7c9d-r2n5z", 230e6, 0.12),
    "postgres": ServiceSpec("16.4", "postgres-0", 1.6e9, 0.37),
}

NAMES = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "wendy",
    "maria",
    "kenji",
    "lena",
    "omar",
    "sofia",
    "lucas",
    "emma",
    "noah",
    "mia",
    "liam",
    "chloe",
    "jonas",
    "ana",
    "pedro",
    "ines",
    "yuki",
    "hana",
    "felix",
    "clara",
    "david",
    "sara",
    "tomas",
    "elena",
    "marco",
    "julia",
    "nils",
    "freya",
    "oskar",
    "ida",
    "leon",
    "amelie",
    "paul",
    "marie",
    "ben",
    "lea",
    "finn",
    "zoe",
    "jan",
    "eva",
    "max",
)
ADMINS = ("maria", "kenji")
COUNTRIES = ("DE", "DE", "DE", "FR", "NL", "AT", "CH", "GB", "US", "ES", "IT", "PL", "SE", "BE", "DK")
UNSEEN_COUNTRIES = ("BR", "VN", "NG", "ID", "AR", "ZA", "TH", "PH", "MA", "PE")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 "
    "Edg/131.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)
UNSEEN_USER_AGENTS = (
    "Mozilla/5.0 (Linux; Android 10; SM-A105F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/96.0.4664.45 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 6.1; Win64; x64; rv:102.0) Gecko/20100101 Firefox/102.0",
    "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.12.388 Version/12.18",
)
ATTACK_USER_AGENTS = ("python-requests/2.31.0", "Go-http-client/1.1", "curl/7.88.1")
PREFIXES = (
    31,
    37,
    46,
    62,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    91,
    92,
    93,
    94,
    95,
    109,
    176,
    178,
    188,
    212,
    213,
    217,
)
ATTACK_PREFIXES = (45, 103, 154, 181, 196, 201)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    admin: bool
    countries: tuple[str, ...]
    agents: tuple[str, ...]
    subnet: str  # "a.b.c."
    hosts: tuple[int, ...]
    weight: float


@dataclass(frozen=True, slots=True)
class Visitor:
    user: User | None
    ip: str
    agent: str
    country: str = ""
    login_name: str = ""  # the name typed at /login when it is not the user's own (attackers)

    @property
    def name(self) -> str:
        return self.login_name or (self.user.name if self.user else "")


@dataclass(slots=True)
class Episode:
    """One injected anomaly episode and what it needs to replay deterministically."""

    kind: str
    start_ns: int
    end_ns: int
    service: str = ""
    share: float = 0.0  # fraction of matching requests altered
    factor: float = 1.0  # latency, memory or response-size multiplier
    visitor: Visitor | None = None
    targets: tuple[str, ...] = ()  # usernames tried by a brute-force attacker
    reason: str = ""
    events: list[tuple[int, str]] = field(default_factory=list)  # (time, flow) of episode-driven requests
    restarts: list[tuple[int, int]] = field(default_factory=list)  # crash-loop (crash, restart) times


def day_factor(time_ns: int) -> float:
    """Traffic relative to the daily mean: peak at 15:00 UTC, trough at 03:00 at 25% of the peak."""
    hour = (time_ns / SEC % DAY_S) / 3600
    return 1 + 0.6 * math.cos(2 * math.pi * (hour - 15) / 24)


def make_users(rng: random.Random) -> list[User]:
    users = []
    for rank, name in enumerate(NAMES):
        countries = (rng.choice(COUNTRIES),) + ((rng.choice(COUNTRIES),) if rng.random() < 0.25 else ())
        agents = tuple(rng.sample(USER_AGENTS, 2 if rng.random() < 0.4 else 1))
        subnet = f"{rng.choice(PREFIXES)}.{rng.randrange(1, 255)}.{rng.randrange(0, 255)}."
        hosts = tuple(rng.randrange(2, 254) for _ in range(rng.randrange(1, 4)))
        weight = 0.6 if name in ADMINS else 1.0 / (1 + rank % 20) ** 0.7
        users.append(
            User(name, name in ADMINS, tuple(dict.fromkeys(countries)), agents, subnet, hosts, weight)
        )
    return users


def usual_visitor(rng: random.Random, user: User) -> Visitor:
    country = user.countries[0] if len(user.countries) == 1 or rng.random() < 0.85 else user.countries[1]
    agent = user.agents[0] if len(user.agents) == 1 or rng.random() < 0.8 else user.agents[1]
    return Visitor(user, user.subnet + str(rng.choice(user.hosts)), agent, country)


def anonymous_visitor(rng: random.Random) -> Visitor:
    ip = f"{rng.choice(PREFIXES)}.{rng.randrange(1, 255)}.{rng.randrange(0, 255)}.{rng.randrange(2, 254)}"
    return Visitor(None, ip, rng.choice(USER_AGENTS))


def attacker_visitor(rng: random.Random, ep: Episode) -> Visitor:
    assert ep.visitor is not None
    return Visitor(None, ep.visitor.ip, ep.visitor.agent, ep.visitor.country, rng.choice(ep.targets))


@dataclass(slots=True)
class Req:
    """One request in flight: who sends it and which episode may alter it."""

    visitor: Visitor
    episode: Episode | None = None
    forced: bool = False  # an episode-driven request: its edge records carry the anomaly
    spiked: bool = False  # latency_spike: the episode's service is slow for this request
    failing: bool = False  # error_rate_burst: the episode's service fails this request
    timing_out: bool = False  # db_timeout_burst: this request's first query times out

    @property
    def kind(self) -> str | None:
        return self.episode.kind if self.episode else None


class World(Protocol):
    """What the request flows (sim/flows.py) use of the running workload; sim.workload.Workload implements it."""

    rng: random.Random
    users: list[User]

    def lat(self, req: Req, span: SpanRec, median_ms: float, sigma: float = 0.45) -> int: ...

    def next_order_id(self) -> int: ...

    def product(self) -> int: ...

    def down(self, service: str, t: int) -> bool: ...

    def emit(self, log: LogRec) -> None: ...
