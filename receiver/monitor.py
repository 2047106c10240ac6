"""Drift of the current version: its training reference against the recent traffic, checked periodically.

The reference is the newest contiguous slice of the version's reference rows (its training rows, stored in its
rows collection), the recent window the last OTAD_DRIFT_WINDOW_ROWS rows it scored; both are featurized with a
fresh context state and embedded by that version (model/drift.py `window`), so context features such as rates
mean the same on both sides and no vector is compared across versions. A version without stored reference rows
(trained by `otad train`) takes its first scored window as the reference.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from model.drift import DriftReport, Hysteresis, Window, compare, window
from model.schema import Row
from model.version import ModelVersion
from receiver.metrics import Metrics
from receiver.retrain import newest_rows
from receiver.settings import Settings
from storage import MilvusStore, StorageError

logger = logging.getLogger(__name__)


class DriftMonitor:
    """The recent window (fed by the pipeline thread), the reference of one version, and the drift switch."""

    def __init__(self, settings: Settings, store: MilvusStore, metrics: Metrics):
        self.settings, self.store, self.metrics = settings, store, metrics
        self.recent: deque[Row] = deque(maxlen=settings.drift_window_rows)
        self.hysteresis = Hysteresis(settings.drift_high, settings.drift_low, settings.drift_checks)
        self.report: DriftReport | None = None
        self.reference: Window | None = None
        self._version: str | None = None  # the version the reference and the switch belong to
        self._wanted: str | None = None  # the version scoring now (set by `reset` on a switch)
        self._stored_reference = False  # the reference came from stored reference rows (else: a first window)
        self._lock = threading.Lock()  # one check at a time

    def observe(self, rows: list[Row]) -> None:
        """Rows the current version scored (the pipeline thread; a deque append is atomic)."""
        self.recent.extend(rows)

    def reset(self, version: str | None) -> None:
        """A new version scores from now on (the pipeline thread, never blocked by a check): a new window now;
        its reference and a fresh switch at the next check, which drops figures of the old version."""
        self.recent = deque(maxlen=self.settings.drift_window_rows)
        self._wanted = version
        self.metrics.drift_active.set(0)

    def check(self, mv: ModelVersion) -> tuple[DriftReport | None, bool]:
        """One drift check of `mv`; returns the report (None until there is a full window) and whether the
        switch turned on with it."""
        with self._lock:
            if self._wanted is None:
                self._wanted = mv.version  # the first version (the cold start switched it in)
            if mv.version != self._wanted:
                return None, False  # a switch is under way
            if self._version != mv.version:
                self._start(mv.version)
            recent = list(self.recent)
            if len(recent) < self.settings.drift_window_rows:
                return None, False
            if self.reference is None:
                reference = self._load_reference(mv) or window(mv, recent)
                if self._wanted != mv.version:
                    return None, False
                self.reference = reference
                if not self._stored_reference:
                    self.recent.clear()  # this window became the reference; the next one is compared to it
                    return None, False
            report = compare(
                self.reference,
                window(mv, recent),
                mv.contract.numeric_names(),
                list(mv.contract.categorical),
                alpha=self.settings.drift_fdr,
                psi_min=self.settings.drift_psi_min,
            )
            if self._wanted != mv.version:
                return None, False  # switched while comparing: never report figures of another version
            return report, self._record(report)

    def _start(self, version: str) -> None:
        self._version, self.reference, self.report = version, None, None
        self._stored_reference = False
        self.hysteresis = Hysteresis(
            self.settings.drift_high, self.settings.drift_low, self.settings.drift_checks
        )

    def _record(self, report: DriftReport) -> bool:
        turned_on = self.hysteresis.update(report.score)
        self.report = report
        self.metrics.drift_features.set(report.feature_share)
        self.metrics.drift_embedding.set(report.embedding)
        self.metrics.drift_new_templates.set(report.new_template_rate)
        self.metrics.drift_active.set(int(self.hysteresis.active))
        if turned_on:
            logger.warning(
                "drift: %.0f%% of features drifted (%s), new-template rate %.1f%%, embedding MMD %.3f",
                100 * report.feature_share,
                ", ".join(report.drifted[:5]) or "none",
                100 * report.new_template_rate,
                report.embedding,
            )
        return turned_on

    def _load_reference(self, mv: ModelVersion) -> Window | None:
        """The newest OTAD_DRIFT_WINDOW_ROWS reference rows of `mv`, featurized and embedded by it."""
        n = self.settings.drift_window_rows
        meta = mv.meta
        template, params = "is_reference == true", None
        start, end, total = (
            meta.get("train_start_unix_nano"),
            meta.get("train_end_unix_nano"),
            meta.get("rows"),
        )
        if start and end and total:  # read only about the newest 2n rows' time span
            lo = int(end - (end - start) * min(1.0, 2 * n / total)) // 1_000_000
            template, params = "is_reference == true and time_ms >= {lo}", {"lo": lo}
        try:
            rows = newest_rows(self.store, mv.version, n, template, params)
        except StorageError as exc:
            logger.warning("drift: cannot read the reference rows of %s (%s)", mv.version, exc)
            rows = []
        self._stored_reference = len(rows) >= min(n, 200)
        return window(mv, rows) if self._stored_reference else None

    def status(self) -> dict:
        fresh = self._wanted == self._version  # else a switch happened since the last check
        report = self.report if fresh else None
        return {
            "version": self._wanted,
            "active": self.hysteresis.active and fresh,
            "streak": self.hysteresis.streak if fresh else 0,
            "high": self.hysteresis.high,
            "low": self.hysteresis.low,
            "recent_rows": len(self.recent),
            **({"report": report.to_dict()} if report is not None else {}),
        }
