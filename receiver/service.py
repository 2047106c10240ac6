"""The composition root: settings in, storage, model, pipeline, spool and servers built once and wired together.

`otad serve` runs a `Service`; tests start it in-process on port 0. CLI commands use `open_store` and `load_model`.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from grpc_health.v1.health_pb2 import HealthCheckResponse

from model.features import ContractVersionError
from model.heap import settle_heap
from model.version import ModelVersion
from receiver import otad_version
from receiver.api.server import build_api
from receiver.consumer import Consumer
from receiver.emit import emitter_from_settings
from receiver.health import HealthServer, MilvusWatch
from receiver.ingest import SpooledIngest, open_spooled_ingest
from receiver.lifecycle import ModelLifecycle
from receiver.metrics import Metrics
from receiver.metrics_items import ModelCollector
from receiver.otlp.servers import build_servers, load_security
from receiver.pipeline import Pipeline
from receiver.settings import Settings
from storage import MilvusStore
from storage.lite_process import LiteServerProcess, is_lite_uri, reclaim, running_endpoint

logger = logging.getLogger("otad")
READINESS_SERVICE = (
    "otad.readiness"  # the gRPC health name of readiness (helm/otad readinessProbe.grpc.service)
)


def open_store(settings: Settings, *, serve: bool = False, owner=None):
    """The MilvusStore for these settings. `otad serve` runs Milvus Lite as a child process (unless
    OTAD_MILVUS_LITE_PROCESS=false) and never shares its data dir: it stops a Lite server whose `otad serve`
    is gone and exits with one line when that `otad serve` is alive. CLI commands reuse the Lite process of a
    running `otad serve` when there is one."""
    uri = settings.resolved_milvus_uri
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    is_lite = is_lite_uri(uri)
    if is_lite:
        if serve and settings.milvus_lite_process:
            owner.lite = LiteServerProcess(uri, nice=settings.background_nice, role="otad serve")
            uri = owner.lite.start()
        elif serve:
            reclaim(uri)  # embedded: the data dir must be free all the same
        else:
            uri = running_endpoint(uri) or uri
    return MilvusStore(
        uri, token=token, timeout_s=settings.milvus_timeout_s, rows_index=settings.milvus_rows_index
    )


class Service:
    """Everything `otad serve` runs; tests start it in-process on port 0."""

    def __init__(self, settings: Settings):
        self.settings = settings
        security = load_security(settings)  # before any start
        self.metrics = Metrics()
        version = otad_version()
        # OTEL_EXPORTER_OTLP_* / OTAD_EXPORT_* resolved and their files read before any start, too.
        self.emitter = emitter_from_settings(settings, version, self.metrics)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.metrics.queue_capacity.set(settings.queue_rows)
        self.lite = None
        self.store = open_store(settings, serve=True, owner=self)
        self.ingest: SpooledIngest | None = None
        try:
            model = load_model(settings, incompatible_ok=True)
            self.pipeline = Pipeline(settings, self.store, self.emitter, self.metrics, version, model)
            self.lifecycle = ModelLifecycle(settings, self.store, self.pipeline, self.metrics)
            consumer: Consumer = self.pipeline
            if settings.spool_enabled:
                self.ingest = consumer = open_spooled_ingest(settings, self.pipeline, self.metrics)
            self.grpc, self.http = build_servers(
                settings, security, consumer, self.metrics, self.pipeline.has_room
            )
            # otad's API (docs/api.md) on OTAD_QUERY_ENDPOINT and under /v1/otad/; feedback in the pipeline
            self.feedback, self.api = build_api(self, security)
            self.lifecycle.feedback = self.feedback  # rows marked normal train and judge retrained versions
        except BaseException:  # e.g. a port in use: do not leave the Milvus Lite child behind
            self.store.close()
            if self.lite is not None:
                self.lite.stop()
            raise
        self.metrics.registry.register(ModelCollector(self._model_meta, settings.detector_names))
        tls, auth = security
        self.milvus = MilvusWatch(self.store.ping, on_tick=self._publish_health)
        self.health = HealthServer(
            settings.metrics_endpoint,
            self.metrics.registry,
            self.status,
            ssl_context=tls.ssl_context() if settings.metrics_tls and tls else None,
            auth=auth if settings.metrics_auth else None,
        )

    def _model_meta(self) -> dict | None:
        mv = getattr(self.pipeline.scorer, "mv", None)
        return getattr(mv, "meta", None)

    def _publish_health(self) -> None:
        """The same answers on gRPC health, for the chart's native gRPC probes: "" is liveness,
        `otad.readiness` readiness (ignored once the gRPC server is shutting down)."""
        st, serving, not_serving = self.status(), HealthCheckResponse.SERVING, HealthCheckResponse.NOT_SERVING
        self.grpc.health.set(READINESS_SERVICE, serving if st["ready"] else not_serving)
        self.grpc.health.set("", serving if st["alive"] else not_serving)

    def status(self) -> dict:
        """/healthz and /readyz: the pipeline's status, `alive` (its threads run) and Milvus reachability."""
        st = self.pipeline.status()
        alive = _pipeline_alive(self.pipeline) and self.emitter.alive
        st.update(alive=alive, milvus_reachable=self.milvus.reachable)
        st["ready"] = bool(st["ready"] and alive and self.milvus.reachable)
        return st

    @property
    def grpc_port(self) -> int:
        return self.grpc.port

    @property
    def http_port(self) -> int:
        return self.http.port

    def start(self) -> None:
        self.emitter.start()
        self.pipeline.start()
        self.lifecycle.start()
        if self.ingest is not None:
            self.ingest.start()
        settle_heap(collect=True)  # before the first request: it walks the whole heap once
        self.grpc.start()
        self.api.start()
        self.http.start()
        self._publish_health()
        self.milvus.start()
        self.health.start()
        st = self.pipeline.status()
        logger.info(
            "otad %s serving OTLP/gRPC on port %d, OTLP/HTTP on %d (%s), metrics on %d; state=%s model=%s milvus=%s export=%s",
            otad_version(),
            self.grpc.port,
            self.http.port,
            "TLS" if self.http.tls else "plaintext",
            self.health.port,
            st["state"],
            st["model_version"],
            self.settings.resolved_milvus_uri,
            self.emitter.endpoint or "(stored only)",
        )
        if st["state"] == "collecting":
            logger.info(
                "no model yet: collecting %d rows before training the first one", self.settings.bootstrap_rows
            )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting (health NOT_SERVING), finish in-flight batches within `grace_s`, checkpoint the spool."""
        self.pipeline.draining = True
        self.milvus.stop()
        self.http.stop(min(grace_s, 5.0))
        self.grpc.stop(min(grace_s, 5.0))
        self.api.stop(min(grace_s, 2.0))
        self.lifecycle.stop()  # a retrain ends at its next epoch; a challenger is discarded
        self.pipeline.stop(grace_s)
        if self.ingest is not None:
            self.ingest.stop()
        self.emitter.close_findings()  # the last Update of every finding with unreported anomalies
        self.emitter.flush(min(grace_s, 5.0))
        self.emitter.shutdown(2.0)
        gc.unfreeze()  # what was frozen at start can be collected again (matters when a process runs several)
        self.health.stop()
        self.store.close()
        if self.lite is not None:
            self.lite.stop()


def _pipeline_alive(pipeline: Pipeline) -> bool:
    """False when the pipeline's worker thread died while it should be running (a bug: /healthz reports it).
    Read here, not in receiver/pipeline.py, which is at its size limit."""
    worker = pipeline._worker
    return worker.is_alive() or pipeline._stop.is_set() or worker.ident is None


def load_model(settings: Settings, *, incompatible_ok: bool = False) -> ModelVersion | None:
    """The current model version, or None when there is none (or, with incompatible_ok, when it was trained by
    a release whose feature contract this one cannot compute: the service then starts over from a cold start)."""
    try:
        return ModelVersion.load_current(
            Path(settings.models_dir),
            k=settings.knn_k,
            alert_pvalue=settings.alert_pvalue,
            false_alerts_per_hour=settings.false_alerts_per_hour,
            max_rows=settings.reference_max_rows,
            series_max=settings.series_max,
        )
    except ContractVersionError as exc:
        if not incompatible_ok:
            raise
        logger.warning(
            "the current model cannot be used: %s; starting from a cold start (a new model is trained once %d rows have arrived)",
            exc,
            settings.bootstrap_rows,
        )
        return None
