"""Per-operation members: the state they share (`_PerOperation`), and the error-rate member, a failure against the
failure rate its operation and service usually have (the latency member is in `model.detectors.latency`).

Both keep online state per (service, operation), score each row against the state before it and then learn it,
forget by time (so a busy and a quiet operation behave alike) and learn slowly from what they flag, so an
incident inside the training window or a long one while serving does not become its own baseline.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from functools import partial
from typing import Any, ClassVar

import numpy as np

from model.calibration import Calibration, calibration_from_arrays, calibration_to_arrays
from model.detectors.base import Detector, Frame, State
from model.detectors.operation_stats import (
    ERR_HARD_KEEP,
    ERR_KEEP,
    ERR_MEMORY,
    ERR_WINDOW_MAX,
    ERR_WINDOW_NS,
    EXCESS_P,
    NS_PER_MIN,
    OUTLIER_SLOW,
    PRIOR_ROWS,
    binomial_tail,
    pack,
    unpack,
)
from model.windows import lru_entry


def op_keys(frame: Frame) -> list[str]:
    """Each row's operation key as a stable string: service, then the derived `operation_key` (or, for a row
    without one, its signal and class), joined by a unit separator; computed once per frame for both members."""
    keys = frame.cache.get("operation.keys")
    if keys is None:
        keys = frame.cache["operation.keys"] = [
            "\x1f".join(map(str, (row.service, *_op_parts(d))))
            for row, d in zip(frame.rows, frame.derived, strict=True)
        ]
    return keys


def _op_parts(d: dict[str, Any]) -> tuple[object, ...]:
    op = d.get("operation_key")
    return tuple(op) if isinstance(op, tuple | list) else (d.get("signal"), d.get("class_uid"))


def op_label(frame: Frame, i: int) -> str:
    """The row's operation in its own words: span/RPC name, log template text and HTTP method and route."""
    d = frame.derived[i]
    what = d.get("trace.span.operation") or d.get("api.operation")
    t = d.get("template")
    if not what and isinstance(t, str) and t.isdigit() and int(t) < len(frame.contract.templates):
        what = repr(frame.contract.templates[int(t)][:60])
    route = d.get("url_template")
    http = " ".join(str(p) for p in (d.get("http_request.http_method"), route) if p)
    if what and route and str(route) in str(what):
        return str(what)
    label = " ".join(p for p in (str(what or ""), http) if p)
    return label or f"class {frame.rows[i].class_uid}"


class _PerOperation(Detector):
    """Online state per operation, per service and over everything: LRU tables of flat entries
    [LAYOUT[0] floats, LAYOUT[1] ints, a sequence of LAYOUT[2]-tuples], persisted as arrays."""

    LAYOUT: ClassVar[tuple[int, int, int]]

    def __init__(self, tau_min: float, max_keys: int) -> None:
        self.tau_ns = tau_min * NS_PER_MIN
        self.max_keys = max_keys
        self._reset()

    def _reset(self) -> None:
        self.ops: OrderedDict[str, list[Any]] = OrderedDict()
        self.services: OrderedDict[str, list[Any]] = OrderedDict()
        self.all: list[Any] = self._new(0)

    @staticmethod
    @abstractmethod
    def _new(t: int) -> list[Any]: ...

    @staticmethod
    @abstractmethod
    def _sequence(chunk: np.ndarray) -> Any: ...

    def state(self) -> State:
        values: dict[str, Any] = {"tau_ns": self.tau_ns, "max_keys": self.max_keys}
        arrays: dict[str, np.ndarray] = {}
        for name, table in (("op", self.ops), ("svc", self.services), ("all", OrderedDict(all=self.all))):
            values[name] = list(table)
            arrays.update({name + k: v for k, v in pack(table, *self.LAYOUT).items()})
        return values, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> Detector:
        det = cls(max_keys=int(values["max_keys"]))  # type: ignore[call-arg]
        det.tau_ns = float(values["tau_ns"])
        tables = {}
        for name in ("op", "svc", "all"):
            tables[name] = unpack(values[name], arrays, name)
            for e in tables[name].values():
                e[-1] = cls._sequence(e[-1])
        det.ops, det.services, det.all = tables["op"], tables["svc"], tables["all"]["all"]
        return det


def measured(row: Any, derived: dict[str, Any]) -> bool:
    """The latency is a measurement (a span's duration, a duration attribute), not a number read from a
    message: "over 9108 s" in a message may be a period as well as a latency, so this member leaves those to
    the members that judge the whole record."""
    return row.fields.get("duration") is not None or derived.get("message.duration_ms") != derived.get(
        "latency_ms"
    )


class ErrorRateDetector(_PerOperation):
    """A failed row whose recent window (last 60 s, at most 100 rows) holds more failures than its baseline rate
    predicts: the exact binomial tail of the window's failure count, for its operation (span or RPC name and
    route; for rows without one, the kind of record) and for its service's rows of the same signal, whichever
    is smaller (Bonferroni x2). A busy operation's burst stands out in its own window, a burst spread over a
    service's rare operations in the service's. The operation's rate is the time-forgetting failure share with
    PRIOR_ROWS rows of its service's rate as prior (the service's with all services'), so a new or rarely seen
    operation starts from its service's rate and an operation that never failed in much history makes its first
    failures informative. Rows that did not fail, and metric points, get p = 1.
    """

    name: ClassVar[str] = "errors"
    global_novelty: ClassVar[bool] = False
    # [failures, rows (decayed), rows seen, last time, excess until, window failures, recent rows as (time,
    # failed, failures so far) sorted by time]
    LAYOUT = (2, 4, 3)

    # Calibrated against the typical time block, not the 90th percentile of blocks as the novelty members are:
    # the binomial tail already measures a burst against the operation's own rate, so the calibration only has
    # to learn how much ordinary failures cluster, which every block shows; failure incidents filling more than
    # a tenth of the training window (a burst of failed logins is many rows a second) no longer set it.
    block_q: ClassVar[float] = 0.5

    def __init__(self, tau_min: float = 60.0, max_keys: int = 50_000) -> None:
        super().__init__(tau_min, max_keys)
        self.calibration: Calibration | None = None

    @staticmethod
    def _new(t: int) -> list[Any]:
        return [0.0, 0.0, 0, t, 0, 0, []]

    @staticmethod
    def _sequence(chunk: np.ndarray) -> Any:
        if chunk.shape[-1] == 3:
            return [(int(t), int(f), int(c)) for t, f, c in chunk]
        # A state saved before 2026-12-07 holds (time, failed) in arrival order: sorted, the counts added.
        rows = sorted((int(t), int(f)) for t, f in chunk)
        counts = np.cumsum([f for _, f in rows], dtype=np.int64).tolist()
        return [(t, f, c) for (t, f), c in zip(rows, counts, strict=True)]

    def fit(self, frame: Frame) -> ErrorRateDetector:
        """Run over the training window, then calibrate the binomial statistic on it: failures cluster (one
        fault logs several lines, a retry fails twice), so the exact tail of independent trials overstates
        how rare a burst is. The p-value is the share of training rows whose statistic was at least as high,
        over time blocks, so an incident in the window does not make its repeats look ordinary."""
        self._reset()
        raw = self.fit_raw_ = self.score_samples(frame)
        ok = ~np.isnan(raw)
        self.calibration = (
            Calibration.fit(raw[ok], frame.times_ns[ok], block_q=self.block_q) if ok.any() else None
        )
        return self

    def score_samples(self, frame: Frame) -> np.ndarray:
        raw = np.full(len(frame), np.nan)
        info: dict[int, tuple[str, int, int, float, float]] = {}
        keys, sources = op_keys(frame), frame.sources
        for i, (row, d) in enumerate(zip(frame.rows, frame.derived, strict=True)):
            if row.signal == "metrics":
                continue
            t, failed = row.time_unix_nano, bool(d.get("failed"))
            svc = lru_entry(self.services, sources[i], partial(self._new, t), self.max_keys)
            op = lru_entry(self.ops, keys[i], partial(self._new, t), self.max_keys)
            rate_all = (self.all[0] + 0.5) / (self.all[1] + 1.0)
            rate_svc = (svc[0] + PRIOR_ROWS * rate_all) / (svc[1] + PRIOR_ROWS)
            rate_op = (op[0] + PRIOR_ROWS * rate_svc) / (op[1] + PRIOR_ROWS)
            raw[i] = 0.0
            windows = [self._window(e, t, failed) for e in (op, svc)]
            if failed:
                tests = [
                    (binomial_tail(k, n, r), e, r, (k, n, secs))
                    for e, r, (k, n, secs) in zip((op, svc), (rate_op, rate_svc), windows, strict=True)
                ]
                for p, e, _, _ in tests:
                    if p < EXCESS_P:
                        e[4] = t + ERR_WINDOW_NS
                p, e, r, (k, n, secs) = min(tests, key=lambda x: x[0])
                raw[i] = -math.log10(max(min(1.0, 2.0 * p), 1e-300))
                info[i] = ("op" if e is op else "svc", k, n, r, secs)
            slow = t < op[4] or t < svc[4]
            for e in (op, svc, self.all):
                self._learn(e, t, failed, 1.0 / OUTLIER_SLOW if slow else 1.0)
        frame.cache[self.name] = info
        return raw

    @staticmethod
    def _window(e: list[Any], t: int, failed: bool) -> tuple[int, int, float]:
        """Add the row to the entry's time-sorted recent rows; its own window as (failures, rows, seconds spanned):
        the last ERR_WINDOW_MAX rows at or before t within ERR_WINDOW_NS, the row included. Rows arrive in time
        order only within a batch (each signal's exporter batches on its own schedule; a backlog drains after
        newer rows), so a late row is counted among the rows before it, not the younger ones already seen. Each
        kept row carries the failures up to it, so a window's count is one difference."""
        win: list[tuple[int, int, int]] = e[6]
        f = int(failed)
        if not win or t >= win[-1][0]:
            win.append((t, f, (win[-1][2] if win else 0) + f))
            hi = len(win)
        else:  # a late row: after the rows of its own time, and counted into every younger row's total
            hi = bisect_right(win, (t, 2))
            before = win[hi - 1][2] if hi else win[0][2] - win[0][1]
            win.insert(hi, (t, f, before + f))
            if f:
                win[hi + 1 :] = [(a, b, c + 1) for a, b, c in win[hi + 1 :]]
            hi += 1
        lo = max(hi - ERR_WINDOW_MAX, 0)
        if win[lo][0] < t - ERR_WINDOW_NS:  # fewer than ERR_WINDOW_MAX rows in the last minute
            lo = bisect_left(win, (t - ERR_WINDOW_NS,), lo, hi)
        fails = win[hi - 1][2] - win[lo][2] + win[lo][1]
        spanned = (win[hi - 1][0] - win[lo][0]) / 1e9
        # Kept: two windows behind the newest row and this row's own window, at most ERR_KEEP rows unless this
        # row's window needs more (a backlog drained in time order), and never more than ERR_HARD_KEEP.
        oldest = min(t - ERR_WINDOW_NS, win[-1][0] - 2 * ERR_WINDOW_NS)
        expired = bisect_left(win, (oldest,), 0, lo) if win[0][0] < oldest else 0
        cut = max(expired, min(lo, len(win) - ERR_KEEP), len(win) - ERR_HARD_KEEP)
        if cut > 0:
            del win[:cut]
        e[5] = fails
        return fails, hi - lo, spanned

    def _learn(self, e: list[Any], t: int, failed: bool, w: float) -> None:
        """Decay the failure and row sums by the time since the last row (never below ERR_MEMORY rows), add this."""
        if t > e[3] and e[1] > ERR_MEMORY:
            keep = max(math.exp(-(t - e[3]) / self.tau_ns), ERR_MEMORY / e[1])
            e[0] *= keep
            e[1] *= keep
        e[0] += w if failed else 0.0
        e[1] += w
        e[2] += 1
        e[3] = max(e[3], t)

    def pvalues(self, frame: Frame, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        clean = np.nan_to_num(raw)
        p = np.clip(10.0**-clean, 1e-300, 1.0)
        if self.calibration is not None:
            p = np.maximum(p, self.calibration.pvalue(clean))  # never rarer than the binomial tail says
        return np.where(np.isnan(raw) | (clean <= 0.0), 1.0, np.clip(p, 1e-300, 1.0))

    def state(self) -> State:
        values, arrays = super().state()
        values["calibrated"] = self.calibration is not None
        if self.calibration is not None:
            arrays.update(calibration_to_arrays(self.calibration, "cal_"))
        return values, arrays

    @classmethod
    def from_state(cls, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> ErrorRateDetector:
        det = super().from_state(values, arrays)
        assert isinstance(det, ErrorRateDetector)
        det.calibration = calibration_from_arrays(arrays, "cal_") if values.get("calibrated") else None
        return det

    def explain(self, frame: Frame, i: int, raw: float, p: float) -> str:
        row = frame.rows[i]
        what = "requests" if row.signal == "traces" else "log records"
        got = frame.cache.get(self.name, {}).get(i)
        if got is None:
            return f"a failed {what[:-1]} of {op_label(frame, i)} in {row.service}"
        level, k, n, rate, secs = got
        whose = f"{op_label(frame, i)} in {row.service}" if level == "op" else f"{row.service}"
        return f"{k} of the last {n} {what} of {whose} failed within {secs:.0f} s; it usually fails {100 * rate:.2g} %"
