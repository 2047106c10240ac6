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
        self._version: str | None = None
        self._stored_reference = False  # the reference came from stored reference rows (else: a first window)
        self._lock = threading.Lock()  # one check at a time

    def observe(self, rows: list[Row]) -> None:
        """Rows the current version scored (the pipeline thread; a deque append is atomic)."""
        self.recent.extend(rows)

    def reset(self, version: str | None) -> None:
        """A new version scores from now on: its own reference and window, the switch off."""
        self.recent = deque(maxlen=self.settings.drift_window_rows)
        self.reference, self._version, self.report = None, version, None
        self._stored_reference = False
        self.hysteresis = Hysteresis(
            self.settings.drift_high, self.settings.drift_low, self.settings.drift_checks
        )
        self.metrics.drift_active.set(0)

    def check(self, mv: ModelVersion) -> tuple[DriftReport | None, bool]:
        """One drift check of `mv`; returns the report (None until there is a full window) and whether the
        switch turned on with it."""
        with self._lock:
            if self._version is None:
                self._version = mv.version  # the first version (the cold start switched it in)
            elif mv.version != self._version:
                self.reset(mv.version)
            recent = list(self.recent)
            if len(recent) < self.settings.drift_window_rows:
                return None, False
            if self.reference is None:
                self.reference = self._load_reference(mv) or window(mv, recent)
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
            return report, turned_on

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
        report = self.report
        return {
            "active": self.hysteresis.active,
            "streak": self.hysteresis.streak,
            "high": self.hysteresis.high,
            "low": self.hysteresis.low,
            "recent_rows": len(self.recent),
            **({"report": report.to_dict()} if report is not None else {}),
        }
