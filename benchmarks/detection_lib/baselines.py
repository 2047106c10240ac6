"""Trivial baselines on the same split as otad: fitted on the first half, scored on the second.

- severity: the row's OCSF severity_id.
- template_freq: -log frequency, in the first half, of the row's message template: otad's own drain miner
  (model.templates.mine / TemplateMatcher) for log messages; spans and metric points use their name.
- iforest: scikit-learn IsolationForest (fixed seed) on raw fields: severity, status, HTTP code and class,
  log duration, template frequency, signed log metric value.
- op_latency_z: |z| of log(1 + duration) against its (service, operation) mean/std in the first half.

A row's duration is a span's, or a log record's duration attribute (`duration_ms`, `latency`, ... as otad's
mapper finds it): issue 12's trivial IsolationForest read the web application's log durations too.
- rolling_z: metric points, |z| against the previous 500 points of the same series (at least 100), as
  nab_score.py's anchor; the first half is its history.

Rows a baseline has nothing to say about score 0 (its lowest).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import IsolationForest

from model.extract import attribute_latency_ms
from model.schema import Row

SEED = 0
Z_WINDOW, Z_MIN_HISTORY = 500, 100
IFOREST_MAX_FIT_ROWS = 100_000
NAMES = ("severity", "template_freq", "iforest", "op_latency_z", "rolling_z")


class _Templates:
    """Template key of a row: a mined template id for log messages (otad's miner), the name otherwise."""

    def __init__(self, train: Sequence[Row]) -> None:
        from model.templates import TemplateMatcher, mine

        self.matcher = TemplateMatcher(mine([_message(r) for r in train if r.signal == "logs"]))
        self.miner = "otad drain (model.templates)"

    def key(self, row: Row) -> tuple[str, str]:
        if row.signal == "logs":
            idx = self.matcher.match(_message(row))
            return (row.signal, f"t{idx}" if idx >= 0 else "unseen:" + _message(row)[:200])
        return (row.signal, f"{row.service}|{_message(row)[:200]}")


def _message(row: Row) -> str:
    return str(row.fields.get("message", ""))


def _num(row: Row, key: str) -> float | None:
    v = row.fields.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _duration(row: Row) -> float | None:
    """A span's duration, or a log record's duration attribute (in ms); None without one."""
    d = _num(row, "duration")
    if d is None and row.signal == "logs":
        d = attribute_latency_ms(row.fields)
        d = d if d is not None and math.isfinite(d) else None
    return d


def _operation(row: Row) -> tuple[str, str]:
    return (row.service, str(row.fields.get("api.operation") or _message(row))[:200])


def _series(row: Row) -> tuple[str, str, str]:
    return (row.service, str(row.fields.get("metric.name")), str(row.fields.get("metric.series")))


def _metric_value(row: Row) -> float | None:
    v = _num(row, "metric.value")
    return v if v is not None else _num(row, "metric.mean")


def template_freq(
    train: Sequence[Row], test: Sequence[Row], tpl: _Templates
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) -log frequency of each row's template in the first half (unseen: the rarest)."""
    keys_train = [tpl.key(r) for r in train]
    counts = Counter(keys_train)
    total = len(keys_train)

    def score(keys: list[tuple[str, str]]) -> np.ndarray:
        return np.asarray([-math.log((counts.get(k, 0) + 1) / (total + 1)) for k in keys])

    return score(keys_train), score([tpl.key(r) for r in test])


def op_latency_z(train: Sequence[Row], test: Sequence[Row]) -> np.ndarray:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in train:
        d = _duration(r)
        if d is not None and d >= 0:
            groups[_operation(r)].append(math.log1p(d))
    stats = {k: (float(np.mean(v)), max(float(np.std(v)), 0.05)) for k, v in groups.items() if len(v) >= 2}
    everything = [x for v in groups.values() for x in v]
    fallback = (
        (float(np.mean(everything)), max(float(np.std(everything)), 0.05)) if everything else (0.0, 1.0)
    )
    out = np.zeros(len(test))
    for i, r in enumerate(test):
        d = _duration(r)
        if d is not None and d >= 0:
            mu, sd = stats.get(_operation(r), fallback)
            out[i] = abs(math.log1p(d) - mu) / sd
    return out


def rolling_z(train: Sequence[Row], test: Sequence[Row]) -> np.ndarray:
    """Per series, |x - mean| / std of the previous Z_WINDOW points (nab_score.py's zscore_baseline)."""
    history: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in train:
        v = _metric_value(r) if r.signal == "metrics" else None
        if v is not None:
            history[_series(r)].append(v)
    out = np.zeros(len(test))
    for i, r in enumerate(test):
        v = _metric_value(r) if r.signal == "metrics" else None
        if v is None:
            continue
        h = history[_series(r)]
        if len(h) >= Z_MIN_HISTORY:
            w = np.asarray(h[-Z_WINDOW:])
            mu, sd = w.mean(), w.std()
            d = abs(v - mu)
            out[i] = d / sd if sd > 0 else (0.0 if d == 0 else 1e9)
        h.append(v)
        if len(h) > 4 * Z_WINDOW:
            del h[: len(h) - Z_WINDOW]
    return out


def _raw_fields(rows: Sequence[Row], tfreq: np.ndarray) -> np.ndarray:
    x = np.zeros((len(rows), 7))
    for i, r in enumerate(rows):
        code = _num(r, "http_response.code") or 0.0
        dur = _duration(r)
        val = _metric_value(r)
        x[i] = (
            r.severity_id,
            r.status_id,
            code,
            code // 100,
            math.log1p(dur) if dur is not None and dur >= 0 else -1.0,
            tfreq[i],
            math.copysign(math.log1p(abs(val)), val) if val is not None else 0.0,
        )
    return x


def iforest(
    train: Sequence[Row], test: Sequence[Row], tf_train: np.ndarray, tf_test: np.ndarray
) -> np.ndarray:
    x_train = _raw_fields(train, tf_train)
    if len(x_train) > IFOREST_MAX_FIT_ROWS:  # an even sample over the first half
        x_train = x_train[np.linspace(0, len(x_train) - 1, IFOREST_MAX_FIT_ROWS).astype(np.int64)]
    forest = IsolationForest(n_estimators=200, random_state=SEED).fit(x_train)
    return -forest.score_samples(_raw_fields(test, tf_test))


def score_baselines(
    train: Sequence[Row], test: Sequence[Row]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every baseline's scores for the test rows (higher = more anomalous), and notes on how each was made."""
    tpl = _Templates(train)
    tf_train, tf_test = template_freq(train, test, tpl)
    scores = {
        "severity": np.asarray([r.severity_id for r in test], dtype=np.float64),
        "template_freq": tf_test,
        "iforest": iforest(train, test, tf_train, tf_test),
        "op_latency_z": op_latency_z(train, test),
        "rolling_z": rolling_z(train, test),
    }
    notes = {"template_freq": tpl.miner, "iforest": f"sklearn IsolationForest(n_estimators=200, seed {SEED})"}
    return scores, notes
