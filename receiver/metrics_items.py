"""Self-observability in the Collector's vocabulary: per-signal item counters and the model's gauges.

The Collector counts receiver and exporter items in the signal's own unit, one metric per unit
(`otelcol_receiver_accepted_log_records`, `_spans`, `_metric_points`; `otelcol_exporter_sent_log_records`), with a
`transport` label. `SignalCounters` declares the three and is addressed like one counter with a leading `signal`
label, so the call sites read `metrics.accepted.labels(signal, transport).inc(n)`. `ModelCollector` reads the
scoring model at scrape time (docs/metrics.md lists every metric).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ITEM_UNITS", "ModelCollector", "SignalCounters"]

ITEM_UNITS = {"logs": "log_records", "traces": "spans", "metrics": "metric_points"}


class SignalCounters:
    """One Counter per signal, named `<prefix>_<unit><suffix>`, addressed as `.labels(signal, *labels)`."""

    def __init__(
        self, prefix: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.counters = {
            signal: Counter(f"{prefix}_{unit}", f"{documentation} ({unit})", labelnames, registry=registry)
            for signal, unit in ITEM_UNITS.items()
        }

    def labels(self, signal: str, *labelvalues: str) -> Any:
        """The child counter; an unknown signal (a client bug) is counted under logs' name, never lost."""
        return self.counters.get(signal, self.counters["logs"]).labels(*labelvalues)


class ModelCollector(Collector):
    """The scoring model's gauges, read at scrape time from `meta()`: None while there is no model."""

    def __init__(self, meta: Callable[[], dict[str, Any] | None], detectors: Sequence[str]) -> None:
        self._meta, self._detectors = meta, tuple(detectors)

    def collect(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "otad_detector_enabled",
            "Ensemble members configured (OTAD_DETECTORS), 1 each",
            labels=["detector"],
        )
        for name in self._detectors:
            members.add_metric([name], 1.0)
        yield members
        try:
            meta = self._meta()
        except Exception:  # a scrape must never fail on a model being switched
            meta = None
        rows = GaugeMetricFamily("otad_model_train_rows", "Rows the current model was trained on")
        end = GaugeMetricFamily(
            "otad_model_train_end_timestamp_seconds", "Time of the newest training row of the current model"
        )
        seconds = GaugeMetricFamily("otad_model_train_seconds", "Training time of the current model")
        if meta:
            rows.add_metric([], float(meta.get("rows") or 0))
            end.add_metric([], float(meta.get("train_end_unix_nano") or 0) / 1e9)
            seconds.add_metric([], float(meta.get("train_seconds") or 0))
        yield from (rows, end, seconds)
