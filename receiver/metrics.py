"""Self-observability: Prometheus metrics and the /metrics, /healthz, /readyz HTTP endpoint."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from receiver.metrics_items import SignalCounters

logger = logging.getLogger(__name__)


class Metrics:
    """One registry per service instance (tests run several in one process)."""

    def __init__(self) -> None:
        """Every self-metric, declared in one place.

        long: a flat list of metric declarations, one statement each.
        """
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        PlatformCollector(registry=r)  # python_info
        # Receiver items in the Collector's units (otelcol_receiver_*): otad_receiver_accepted_log_records,
        # _spans, _metric_points; `.labels(signal, ...)` picks the unit (receiver/metrics_items.py).
        self.accepted = SignalCounters(
            "otad_receiver_accepted", "Items accepted and queued", ["transport"], registry=r
        )
        self.rejected = SignalCounters(
            "otad_receiver_rejected", "Items rejected in a partial success", ["reason", "transport"], r
        )
        self.refused = SignalCounters(
            "otad_receiver_refused",
            "Items refused with UNAVAILABLE / 503 (the client retries)",
            ["reason", "transport"],
            registry=r,
        )
        self.requests = Counter(
            "otad_receiver_requests",
            "Export requests received, by outcome (ok, partial, or the status code)",
            ["signal", "transport", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "otad_auth_failures",
            "Requests refused for missing or wrong bearer tokens",
            ["transport", "reason"],
            registry=r,
        )
        self.ignored = Counter(
            "otad_ignored_items",
            "otad's own anomaly events and no-value points, skipped",
            ["signal"],
            registry=r,
        )
        self.queue_rows = Gauge("otad_pipeline_queue_size", "Rows waiting in the ingest queue", registry=r)
        self.queue_capacity = Gauge(
            "otad_pipeline_queue_capacity", "Rows the ingest queue holds (OTAD_QUEUE_ROWS)", registry=r
        )
        self.rows_processed = Counter(
            "otad_rows_processed", "Rows through the pipeline", ["state"], registry=r
        )
        self.anomalies = Counter("otad_anomalies", "Anomaly events found", ["signal"], registry=r)
        # The anomaly-event exporter in the Collector's words (otelcol_exporter_*), events being log records.
        self.exporter_sent = Counter(
            "otad_exporter_sent_log_records", "Anomaly events the backend accepted", registry=r
        )
        self.exporter_send_failed = Counter(
            "otad_exporter_send_failed_log_records",
            "Anomaly events given up (not retryable, deadline reached, or rejected in a partial success)",
            registry=r,
        )
        self.exporter_enqueue_failed = Counter(
            "otad_exporter_enqueue_failed_log_records",
            "Anomaly events dropped from a full export buffer or at shutdown (still stored)",
            registry=r,
        )
        self.exporter_queue_size = Gauge(
            "otad_exporter_queue_size", "Anomaly events waiting to be sent", registry=r
        )
        self.exporter_queue_capacity = Gauge(
            "otad_exporter_queue_capacity", "Anomaly events the export buffer holds", registry=r
        )
        self.events = Counter(
            "otad_anomaly_events",
            "Anomalies by what the finding aggregation did: created / updated (an event sent), aggregated "
            "(folded into a later event of its finding), rate_limited (an event held back by "
            "OTAD_EVENT_MAX_PER_MINUTE, sent later)",
            ["outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "otad_stage_seconds",
            "Time per pipeline stage per batch",
            ["stage"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.export_seconds = Histogram(
            "otad_receiver_request_seconds",
            "Export RPC handling time",
            ["signal"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.model_info = Gauge(
            "otad_model_info", "Current model version (value 1)", ["version", "state"], registry=r
        )
        self.rows_unscored = Counter(
            "otad_rows_unscored",
            "Rows stored unscored in the backlog because scoring failed on their batch every time",
            registry=r,
        )
        self.errors = Counter(
            "otad_pipeline_errors", "Batches that failed in the pipeline", ["stage"], registry=r
        )
        # Bad input that is kept, cut or set aside rather than silently lost (docs/reliability.md).
        self.bounded = Counter(
            "otad_bounded_items",
            "Items stored with a field bounded at entry (hashed uid, cut string, dropped attributes)",
            ["signal", "field"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "otad_dead_lettered_rows",
            "Rows storage refused, written to the dead-letter file instead",
            ["stage", "cause"],
            registry=r,
        )
        self.new_sources = Counter(
            "otad_new_sources",
            "Sources (service and signal) first seen after training: learned during a warm-up, not alerted on",
            registry=r,
        )
        self.new_kinds = Counter(
            "otad_new_kinds",
            "Kinds of record (a message no trained template fits, a new span operation or RPC method) first seen"
            " after training: their novelty alone does not alert while they warm up",
            registry=r,
        )
        self.detector_weight = Gauge(
            "otad_detector_weight",
            "Each member's weight in the combination, by its agreement with the others on recent traffic",
            ["detector", "signal"],
            registry=r,
        )
        self.transport_refusals = Counter(
            "otad_receiver_refused_requests",
            "Requests refused before their items were read (undecodable, over the size limit, bad encoding)",
            ["signal", "transport", "reason"],
            registry=r,
        )
        self.feedback_silenced = Counter(
            "otad_feedback_silenced_anomalies",
            "Anomalies stored but not reported: look-alikes of operator feedback (receiver/feedback.py)",
            ["kind", "signal"],
            registry=r,
        )

        # Model life cycle (receiver/lifecycle.py, model/drift.py).
        self.drift_features = Gauge(
            "otad_drift_feature_share",
            "Share of features drifted from the training reference (KS/chi-square, BH-controlled, PSI-gated)",
            registry=r,
        )
        self.drift_embedding = Gauge(
            "otad_drift_embedding_mmd",
            "Squared MMD between the reference and recent embeddings (0 = no drift)",
            registry=r,
        )
        self.drift_new_templates = Gauge(
            "otad_drift_new_template_rate",
            "Share of recent log messages no training template matches",
            registry=r,
        )
        self.drift_active = Gauge(
            "otad_drift_active", "Drift past its threshold (hysteresis), 0 or 1", registry=r
        )
        self.retrains = Counter(
            "otad_model_retrains",
            "Retrained versions by outcome (promoted, discarded, failed)",
            ["outcome"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "otad_retention_deleted",
            "Rows and anomaly events deleted by OTAD_RETENTION_DAYS",
            ["kind"],
            registry=r,
        )

    def set_detector_weights(self, weights: dict[str, dict[str, float]]) -> None:
        """The members' agreement weights of the latest batch: signal -> detector -> weight."""
        for signal, by_detector in weights.items():
            for detector, w in by_detector.items():
                self.detector_weight.labels(detector, signal).set(w)


# HealthServer moved to receiver/health.py (TLS, bearer auth, honest /healthz and /readyz).
