"""Shared test helpers: rows with a known shape, for tests that need a model or stored rows."""

from __future__ import annotations

import random

from model.schema import Row

T0 = 1_762_041_600_000_000_000


def make_rows(n: int, seed: int = 0, start: int = T0) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        user = f"user{rng.randint(1, 10)}"
        rows.append(Row(
            uid=f"r{seed}-{i}", signal="logs", time_unix_nano=start + i * 50_000_000, service=rng.choice(["a", "b"]),
            class_uid=4002, activity_id=3, severity_id=1, status_id=1,
            fields={"message": f"GET /items/{rng.randint(1, 900)} served in {rng.randint(5, 50)} ms",
                    "duration": rng.lognormvariate(3, 0.3), "http_request.url.path": f"/items/{rng.randint(1, 900)}",
                    "http_request.http_method": "GET", "actor.user.name": user,
                    "src_endpoint.location.country": "DE", "http_response.length": rng.lognormvariate(8, 2),
                    "unmapped.is_anomaly": rng.random() < 0.5, "unmapped.anomaly_type": "x",
                    "unmapped.cache.hit": rng.randint(0, 1), "unmapped.region": rng.choice(["eu", "us"])}))
    return rows
