"""The life cycle's periodic work (a mixin of `receiver.lifecycle.ModelLifecycle`): drift checks, the retrain
they and OTAD_RETRAIN_INTERVAL_H start with OTAD_AUTO_RETRAIN, and retention."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from receiver.metrics import Metrics
from receiver.monitor import DriftMonitor
from receiver.registry import Registry
from receiver.retention import apply_retention
from receiver.settings import Settings
from storage import MilvusStore

logger = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


class PeriodicWork:
    """Drift checks and retention, on the life cycle's own thread."""

    settings: Settings
    store: MilvusStore
    pipeline: Any
    metrics: Metrics
    monitor: DriftMonitor
    registry: Registry
    _stop: threading.Event
    _challenger: Any
    _worker: threading.Thread | None

    def retrain(self, reason: str) -> str:
        raise NotImplementedError

    def _tick(self) -> None:
        """The life cycle's thread: retention at start and hourly, a drift check every OTAD_DRIFT_CHECK_S."""
        next_retention = next_drift = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_EVERY_S
                    self.apply_retention()
                if time.monotonic() >= next_drift:
                    next_drift = time.monotonic() + self.settings.drift_check_s
                    self.check_drift()
            except Exception:
                logger.exception("the life cycle's periodic work failed")

    def check_drift(self) -> dict | None:
        """One drift check; with OTAD_AUTO_RETRAIN, a retrain when drift turns on or the interval passed."""
        scorer = self.pipeline.scorer
        if scorer is None:
            return None
        report, turned_on = self.monitor.check(scorer.mv)
        s = self.settings
        if s.auto_retrain and self._challenger is None and not (self._worker and self._worker.is_alive()):
            trained_at = float(scorer.mv.meta.get("trained_at", time.time()))
            if turned_on and report is not None:
                self.retrain(
                    f"drift: {report.feature_share:.0%} of features drifted "
                    f"({', '.join(report.drifted[:3]) or 'none'}), {report.new_template_rate:.0%} new templates"
                )
            elif s.retrain_interval_h and time.time() - trained_at > s.retrain_interval_h * 3600:
                self.retrain(f"interval: {s.retrain_interval_h:g} h since {scorer.mv.version} was trained")
        return report.to_dict() if report is not None else None

    def apply_retention(self, now_ms: int | None = None) -> dict[str, int]:
        """Delete rows and anomaly events older than OTAD_RETENTION_DAYS (nothing when 0)."""
        if not self.settings.retention_days:
            return {}
        deleted = apply_retention(self.store, self.registry.versions(), self.settings.retention_days, now_ms)
        for kind, n in deleted.items():
            self.metrics.retention_deleted.labels(kind).inc(n)
        return deleted
