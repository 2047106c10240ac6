"""Settings: every `OTAD_*` environment variable, validated once in the composition root."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """Bad configuration found at start-up; the message is one sentence naming the variable and the fix."""


class Settings(BaseSettings):
    """otad's configuration. Tests build it directly; `otad` reads it from the environment."""

    model_config = SettingsConfigDict(env_prefix="OTAD_", env_ignore_empty=True, extra="ignore")

    data_dir: Path = Path("./otad-data")  # models, Milvus Lite file, spool
    grpc_endpoint: str = "localhost:4317"  # OTLP/gRPC listen address
    http_endpoint: str = "localhost:4318"  # OTLP/HTTP listen address
    query_endpoint: str = "localhost:4320"  # otad's own gRPC API (reserved)
    metrics_endpoint: str = "localhost:9464"  # Prometheus /metrics, /healthz, /readyz
    metrics_tls: bool = False  # serve the metrics port over TLS with OTAD_TLS_CERT_FILE / OTAD_TLS_KEY_FILE
    metrics_auth: bool = False  # /metrics needs a bearer token of OTAD_AUTH_TOKENS / _FILE (probes stay open)
    # Anomaly-event export (receiver/export_config.py): each OTAD_EXPORT_* overrides OTEL_EXPORTER_OTLP_LOGS_*,
    # which overrides OTEL_EXPORTER_OTLP_*; unset everywhere = the default in the comment.
    export_endpoint: str | None = None  # HOST:PORT or http(s):// URL for anomaly events; unset = stored only
    export_protocol: Literal["grpc", "http/protobuf"] | None = None  # default grpc
    export_insecure: bool | None = None  # plaintext; default: from the URL scheme (HOST:PORT: true)
    export_timeout_s: float | None = Field(None, gt=0)  # one deadline for all attempts of one export; 10
    export_ca_file: Path | None = None  # CA bundle to verify the export endpoint (TLS); None: system CAs
    export_client_cert_file: Path | None = None  # PEM client certificate for mTLS to the export endpoint
    export_client_key_file: Path | None = None  # its PEM private key
    export_headers: SecretStr | None = None  # extra export headers, "authorization=Bearer%20x,tenant=a"
    export_compression: Literal["gzip", "none"] | None = None  # default gzip (the OTel SDKs' default: none)
    # Anomaly events (receiver/aggregate.py): repeats of one pattern within the window update one finding.
    event_window_s: float = Field(
        300.0, ge=0
    )  # a finding ends after this quiet time; 0: one event per anomaly
    event_max_per_window: int = Field(1, ge=1)  # events per finding per window (its Create included)
    event_wait_s: float = Field(
        60.0, ge=0
    )  # a finding's first event waits this long for repeats (group_wait)
    event_max_per_minute: int = Field(60, ge=1)  # events per minute overall; the rest wait (never dropped)
    event_name_attribute: bool = (
        False  # also the deprecated `event.name` attribute (backends without EventName)
    )
    milvus_uri: str | None = None  # None: Milvus Lite file <data_dir>/milvus.db; http://host:19530: a server
    milvus_token: SecretStr | None = None  # for a Milvus server with auth
    milvus_timeout_s: float = Field(30.0, gt=0)  # every Milvus call carries it
    milvus_lite_process: bool = True  # run Milvus Lite as a child process (own core, no GIL contention)
    # Embedding index of a new rows collection: flat (exact search, nothing to build; about half the Milvus
    # Lite CPU per stored row) or autoindex (HNSW in Milvus Lite, rebuilt at every flush and compaction).
    milvus_rows_index: Literal["flat", "autoindex"] = "flat"
    bootstrap_rows: int = Field(5000, ge=100)  # rows collected before the first model is trained
    max_recv_mib: int = Field(64, ge=1, le=1024)  # OTLP request limit after decompression
    queue_rows: int = Field(200_000, ge=1000)  # bounded ingest queue, in rows
    batch_rows: int = Field(4096, ge=1)  # rows per pipeline batch
    batch_wait_ms: int = Field(200, ge=1)  # longest a row waits for its batch to fill
    retry_after_s: int = Field(5, ge=1)  # RetryInfo delay when the queue is full
    knn_k: int = Field(10, ge=1, le=200)  # neighbours for the k-NN distance
    alert_pvalue: float = Field(1e-3, gt=0, lt=0.5)  # the highest p-value that alerts (slow streams)
    # Expected false alerts per hour of each (service, signal) at the threshold: a row alerts when its combined
    # p-value is below this divided by the stream's rows per hour (and below alert_pvalue).
    false_alerts_per_hour: float = Field(10.0, gt=0, le=1000)
    # The ensemble's members (docs/detection.md) and how their p-values are combined.
    detectors: str = "knn,pattern,isolation,latency,errors,series"
    combiner: Literal["cauchy", "minp", "fisher"] = "minp"
    # Members weighted by how often their findings on recent traffic are shared by members reading other
    # inputs (docs/detection.md), or all alike.
    member_weights: Literal["agreement", "equal"] = "agreement"
    # The scoring process saves its learned state (baselines, reference growth, first-seen sources) this often.
    state_save_s: float = Field(300.0, ge=1)
    reference_max_rows: int = Field(100_000, ge=1000)  # normal history kept in the in-process index
    # Metric series the series member tracks at once (about 45 KB each); past it the least recently seen is
    # dropped (with a log line) and warms up again when it returns.
    series_max: int = Field(10_000, ge=1)
    train_epochs: int = Field(30, ge=1)  # upper bound; early stopping usually ends sooner
    train_max_rows: int = Field(
        200_000, ge=100
    )  # newest rows used for training (otad train on 165k rows peaked at 1.8 GB)
    embed_dim: int = Field(32, ge=4)  # embedding dimension
    seed: int = 7  # training seed
    torch_threads: int = Field(1, ge=1)  # intra-op threads for inference in the service
    score_process: bool = True  # score in a child process (own core; the receiver keeps the GIL to itself)
    # Niceness added to the scoring and Milvus Lite children: when the cores are busy, the receiver (whose
    # Export latency clients wait on) gets the CPU first and the batch work behind the queue absorbs the wait.
    background_nice: int = Field(10, ge=0, le=19)
    log_level: str = "INFO"
    # OTLP servers: TLS, mTLS, bearer-token auth, gRPC transport limits. Defaults: plaintext, no auth.
    tls_cert_file: Path | None = None  # PEM certificate (chain) of both OTLP servers; None: plaintext
    tls_key_file: Path | None = None  # PEM private key of that certificate
    tls_client_ca_file: Path | None = None  # PEM CA bundle; set: clients must present a certificate (mTLS)
    auth_token_file: Path | None = None  # bearer tokens clients must send, one per line
    auth_tokens: SecretStr | None = None  # bearer tokens, comma-separated (in addition to the file)
    grpc_max_concurrent_streams: int = Field(100, ge=1)  # HTTP/2 streams per client connection
    grpc_keepalive_time_s: int = Field(60, ge=1)  # server pings an idle connection after this many seconds
    grpc_keepalive_timeout_s: int = Field(20, ge=1)  # and closes it when the ping is not answered in time
    grpc_keepalive_min_time_s: int = Field(5, ge=1)  # clients pinging more often get GOAWAY too_many_pings
    grpc_max_connection_age_s: int = Field(0, ge=0)  # close connections this old (rebalancing); 0: never
    # Durable ingest spool (docs/reliability.md): accepted requests are on disk before the client gets OK.
    spool_enabled: bool = True  # false: accepted data lives only in memory until stored (lost on a crash)
    spool_fsync: Literal["always", "interval", "never"] = "interval"  # when an append counts as durable
    spool_fsync_interval_ms: int = Field(10, ge=1, le=1000)  # group-commit period of `interval`
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)  # full spool: UNAVAILABLE + RetryInfo
    spool_segment_bytes: int = Field(64 << 20, ge=1 << 16)  # segment files roll at this size
    shutdown_grace_s: float = Field(20.0, ge=0)  # SIGTERM: time to finish in-flight batches
    # Rows Milvus refuses as data go to <data dir>/dead-letter/rows.jsonl, capped at this size.
    dead_letter_max_bytes: int = Field(256 << 20, ge=1 << 20)
    pipeline_stall_s: float = Field(
        60.0, gt=0
    )  # rows waiting and none stored this long: /readyz says not ready
    # Model life cycle (docs/lifecycle.md): retraining from stored rows, a challenger, drift, retention.
    auto_retrain: bool = False  # retrain on drift (and every OTAD_RETRAIN_INTERVAL_H when set) unasked
    retrain_interval_h: float = Field(0.0, ge=0)  # with OTAD_AUTO_RETRAIN: retrain this often; 0: on drift
    challenger_rows: int = Field(20_000, ge=100)  # rows a retrained version scores in shadow, then judged
    challenger_alert_factor: float = Field(3.0, gt=1)  # its alert rate may be this many times the current's
    drift_check_s: float = Field(300.0, ge=1)  # how often drift is measured
    drift_window_rows: int = Field(5000, ge=200)  # recent rows (and reference rows) a drift check compares
    drift_fdr: float = Field(0.01, gt=0, lt=1)  # false-discovery rate of the per-feature tests (BH)
    drift_psi_min: float = Field(0.1, ge=0)  # a significant feature counts as drifted from this PSI on
    drift_high: float = Field(0.2, gt=0, le=1)  # drift turns on after OTAD_DRIFT_CHECKS checks above this
    drift_low: float = Field(0.1, ge=0, le=1)  # and off again below this one
    drift_checks: int = Field(3, ge=1)  # consecutive checks above OTAD_DRIFT_HIGH that turn drift on
    retention_days: float = Field(0.0, ge=0)  # rows and anomaly events older than this are deleted; 0: kept
    models_keep: int = Field(3, ge=1)  # model versions kept (the current one included); older are pruned

    @field_validator("grpc_endpoint", "http_endpoint", "query_endpoint", "metrics_endpoint")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT (for example localhost:4317)")
        return v

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, v: str) -> str:
        from model.detectors import REGISTRY

        names = [n.strip() for n in v.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown or not names:
            raise ValueError(f"{v!r} must name detectors among {', '.join(REGISTRY)} (comma-separated)")
        return ",".join(dict.fromkeys(names))

    @property
    def detector_names(self) -> tuple[str, ...]:
        return tuple(self.detectors.split(","))

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v.upper()

    @model_validator(mode="after")
    def _cross(self) -> Settings:
        if self.batch_rows > self.queue_rows:
            raise ValueError(
                f"OTAD_BATCH_ROWS ({self.batch_rows}) must be <= OTAD_QUEUE_ROWS ({self.queue_rows}); "
                "raise OTAD_QUEUE_ROWS or lower OTAD_BATCH_ROWS"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("OTAD_TLS_CERT_FILE", "OTAD_TLS_KEY_FILE")
                if self.tls_key_file is None
                else ("OTAD_TLS_KEY_FILE", "OTAD_TLS_CERT_FILE")
            )
            raise ValueError(f"{given} is set but {missing} is not; set both (or neither, for plaintext)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "OTAD_TLS_CLIENT_CA_FILE (mTLS) needs TLS: set OTAD_TLS_CERT_FILE and OTAD_TLS_KEY_FILE"
            )
        if self.metrics_tls and self.tls_cert_file is None:
            raise ValueError(
                "OTAD_METRICS_TLS is true but OTAD_TLS_CERT_FILE is not set; set OTAD_TLS_CERT_FILE and "
                "OTAD_TLS_KEY_FILE (the metrics port uses the OTLP servers' certificate)"
            )
        if self.metrics_auth and self.auth_tokens is None and self.auth_token_file is None:
            raise ValueError(
                "OTAD_METRICS_AUTH is true but no bearer token is configured; set OTAD_AUTH_TOKENS or "
                "OTAD_AUTH_TOKEN_FILE"
            )
        if self.export_ca_file is not None and self.export_insecure is True:
            raise ValueError(
                "OTAD_EXPORT_CA_FILE is set but OTAD_EXPORT_INSECURE is true (plaintext); "
                "set OTAD_EXPORT_INSECURE=false to export over TLS"
            )
        self.export_header_map  # noqa: B018 (validates the syntax at start-up)
        if self.drift_low > self.drift_high:
            raise ValueError(
                f"OTAD_DRIFT_LOW ({self.drift_low}) must be <= OTAD_DRIFT_HIGH ({self.drift_high}); "
                "lower OTAD_DRIFT_LOW or raise OTAD_DRIFT_HIGH"
            )
        if self.spool_segment_bytes > self.spool_max_bytes:
            raise ValueError(
                f"OTAD_SPOOL_SEGMENT_BYTES ({self.spool_segment_bytes}) must be <= OTAD_SPOOL_MAX_BYTES "
                f"({self.spool_max_bytes}); raise OTAD_SPOOL_MAX_BYTES or lower OTAD_SPOOL_SEGMENT_BYTES"
            )
        return self

    @property
    def export_header_map(self) -> dict[str, str]:
        """OTAD_EXPORT_HEADERS as a dict with lower-case keys (gRPC metadata keys are lower case), values
        percent-decoded as OTEL_EXPORTER_OTLP_HEADERS are."""
        from urllib.parse import unquote

        if self.export_headers is None:
            return {}
        headers: dict[str, str] = {}
        for item in self.export_headers.get_secret_value().split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(
                    "OTAD_EXPORT_HEADERS must be KEY=VALUE pairs separated by commas, for example authorization=Bearer x,tenant=a"
                )
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
        return headers

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
