"""The anomaly emitter over TLS with a private CA and extra headers (OTAD_EXPORT_CA_FILE, OTAD_EXPORT_HEADERS),
pointed at a real otad OTLP/gRPC server that requires both: otad is a LogsService too."""

from __future__ import annotations

import pytest

from model.schema import Anomaly, Row
from receiver.emit import AnomalyEmitter
from receiver.events import AnomalyEvent
from receiver.otlp.tls import emitter_credentials
from receiver.settings import Settings

pytestmark = pytest.mark.integration


def anomaly(uid: str) -> AnomalyEvent:
    row = Row(
        uid=uid,
        signal="logs",
        time_unix_nano=1_762_041_600_000_000_000,
        service="checkout",
        class_uid=6003,
        activity_id=2,
        severity_id=1,
        status_id=1,
        fields={"message": "slow"},
    )
    return AnomalyEvent.of(
        Anomaly(
            row=row,
            score=95.0,
            raw_score=2.0,
            threshold=70.0,
            detector="tabular-resnet-knn",
            model_version="v1",
            explanation="slow",
            neighbors=(),
            evidence=(),
            detected_unix_nano=1,
        ),
        "test",
    )


def emitter_for(settings: Settings) -> AnomalyEmitter:
    return AnomalyEmitter(
        settings.export_endpoint,
        version="test",
        insecure=settings.export_insecure,
        credentials=emitter_credentials(settings),
        headers=settings.export_header_map,
        timeout_s=3,
    )


@pytest.mark.parametrize("headers", ["authorization=Bearer {token},tenant=a", "tenant=a"])
def test_emitter_exports_over_tls_with_headers(tls_auth, pki, tokens, headers):
    settings = Settings(
        export_endpoint=f"localhost:{tls_auth.grpc_port}",
        export_insecure=False,
        export_ca_file=pki.ca,
        export_headers=headers.format(token=tokens["env"]),
    )
    ignored_before = (
        tls_auth.metrics.registry.get_sample_value("otad_ignored_items_total", {"signal": "logs"}) or 0
    )
    emitter = emitter_for(settings)
    emitter.start()
    try:
        emitter.emit([anomaly("a1"), anomaly("a2")])
        assert emitter.flush(10)
    finally:
        emitter.shutdown(2)
    ignored = tls_auth.metrics.registry.get_sample_value("otad_ignored_items_total", {"signal": "logs"}) or 0
    if "authorization" in headers:
        assert emitter.stats["sent"] == 2 and emitter.stats["failed"] == 0
        assert ignored == ignored_before + 2  # otad received its own events (scope otad) and skipped them
    else:
        assert emitter.stats["failed"] == 2 and ignored == ignored_before  # UNAUTHENTICATED is not retried


def test_emitter_without_the_private_ca_cannot_connect(tls_auth, tokens):
    settings = Settings(
        export_endpoint=f"localhost:{tls_auth.grpc_port}",
        export_insecure=False,
        export_headers=f"authorization=Bearer {tokens['env']}",
    )
    emitter = emitter_for(settings)
    emitter.start()
    try:
        emitter.emit([anomaly("a3")])
        assert emitter.flush(10)
    finally:
        emitter.shutdown(2)
    assert emitter.stats["sent"] == 0 and emitter.stats["failed"] == 1
