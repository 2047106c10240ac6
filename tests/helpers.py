"""Shared test helpers: rows with a known shape, for tests that need a model or stored rows."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from model.schema import Row
from storage import MilvusStore
from storage import collection as col

T0 = 1_762_041_600_000_000_000


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port from that range can be taken, between
    this call and the bind (or while a test restarts a server on it), as the local port of any outgoing
    connection (to Milvus, to an exporter's endpoint): then the bind fails with "address in use"."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def make_rows(n: int, seed: int = 0, start: int = T0) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        user = f"user{rng.randint(1, 10)}"
        rows.append(
            Row(
                uid=f"r{seed}-{i}",
                signal="logs",
                time_unix_nano=start + i * 50_000_000,
                service=rng.choice(["a", "b"]),
                class_uid=4002,
                activity_id=3,
                severity_id=1,
                status_id=1,
                fields={
                    "message": f"GET /items/{rng.randint(1, 900)} served in {rng.randint(5, 50)} ms",
                    "duration": rng.lognormvariate(3, 0.3),
                    "http_request.url.path": f"/items/{rng.randint(1, 900)}",
                    "http_request.http_method": "GET",
                    "actor.user.name": user,
                    "src_endpoint.location.country": "DE",
                    "http_response.length": rng.lognormvariate(8, 2),
                    "unmapped.is_anomaly": rng.random() < 0.5,
                    "unmapped.anomaly_type": "x",
                    "unmapped.cache.hit": rng.randint(0, 1),
                    "unmapped.region": rng.choice(["eu", "us"]),
                },
            )
        )
    return rows


def uid_counts(store: MilvusStore, uids: list[str]) -> dict[str, int]:
    """Entities per uid across the backlog and every rows collection (0 = lost, > 1 = stored twice)."""
    names = [
        n
        for n in store._call("list", lambda c: c.list_collections())
        if n == col.BACKLOG_COLLECTION or n.startswith(col.ROWS_PREFIX)
    ]
    counts = dict.fromkeys(uids, 0)
    for name in names:
        store._call("load", lambda c, n=name: c.load_collection(n))  # a new client finds them released
        for start in range(0, len(uids), 1000):
            part = uids[start : start + 1000]
            found = store._call(
                "query",
                lambda c, p=part, n=name: c.query(
                    n,
                    output_fields=["uid"],
                    limit=len(p),
                    consistency_level=col.STRONG,
                    **store._filter("uid in {uids}", {"uids": p}),
                ),
            )
            for row in found:
                counts[str(row["uid"])] += 1
    return counts


def log_frame(messages: list[str | None], start: int = 0, severity: int = 1):  # -> model.detectors.base.Frame
    """A detector frame of log rows of one service ("shop"), one a second from 1,800,000,000 s; None = an ordinary
    message of a trained template, a string = a message no trained template fits, at `severity` (OCSF)."""
    import numpy as np

    from model.detectors.base import Frame
    from model.features import FeatureContract

    t0 = 1_800_000_000 * 10**9
    rows, derived = [], []
    for j, message in enumerate(messages):
        i = start + j
        sev = 1 if message is None else severity
        rows.append(Row(f"u{i}", "logs", t0 + i * 10**9, "shop", 1007, 1, sev, 1))
        d = {"signal": "logs", "service": "shop", "class_uid": 1007, "severity_id": sev, "failed": sev >= 4}
        d.update({"template": "0"} if message is None else {"template": "<unseen>", "_message": message})
        derived.append(d)
    n = len(rows)
    return Frame(rows, derived, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), FeatureContract())
