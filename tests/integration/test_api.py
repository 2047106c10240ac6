"""otad's API end to end: a Service in-process with TLS and a bearer token, a model trained from its cold start,
real Milvus Lite, the scoring child; the CLI (receiver/cli_api.py) over gRPC and over HTTP, and feedback
measured on the scoring path (MarkNormal silences look-alikes from the next batch; Suppress only in its scope
and only until its TTL)."""

from __future__ import annotations

import json
import random
import ssl
import time
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from receiver.api.client import ApiCallError, ApiClient, Connection
from receiver.api.gen import anomalies_pb2
from receiver.cli import main
from receiver.service import Service
from receiver.settings import Settings
from tests.certs import make_pki
from tests.otlp_sink import OtlpSink

pytestmark = pytest.mark.integration
T0 = 1_762_041_600_000_000_000
STEP = 20_000_000
TOKEN = "api-test-token"


def _kv(key, value):
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def request(records):
    """records: (service, time_ns, body, attributes, severity_number)."""
    req = logs_pb.ExportLogsServiceRequest()
    for service in sorted({r[0] for r in records}):
        rl = req.resource_logs.add()
        rl.resource.attributes.append(_kv("service.name", service))
        sl = rl.scope_logs.add()
        for _, t, body, attrs, sev in (r for r in records if r[0] == service):
            lr = sl.log_records.add(time_unix_nano=t, severity_number=sev)
            lr.body.string_value = body
            lr.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return req


def normal(n, start, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        service = "checkout" if i % 2 else "billing"
        path = "/cart" if service == "checkout" else "/invoice"
        ms = rng.lognormvariate(3.0, 0.3)
        item = rng.randint(1, 500)
        attrs = {
            "http.request.method": "GET",
            "url.path": f"{path}/{item}",
            "http.response.status_code": 200,
            "duration_ms": ms,
            "log.record.uid": f"n{seed}-{i}",
        }
        out.append((service, start + i * STEP, f"GET {path}/{item} served in {ms:.1f} ms", attrs, 9))
    return out


def slow(uid, t, service="checkout"):
    """A look-alike of the same incident: a 30 s request (the cart id and the exact time vary)."""
    ms = 30_000.0 + random.Random(uid).uniform(0, 500)
    path = "/cart" if service == "checkout" else "/invoice"
    attrs = {
        "http.request.method": "GET",
        "url.path": f"{path}/{77}",
        "http.response.status_code": 200,
        "duration_ms": ms,
        "log.record.uid": uid,
    }
    return (service, t, f"GET {path}/77 served in {ms:.1f} ms", attrs, 9)


def failed(uid, t, service):
    """Another incident: the payment provider fails."""
    attrs = {
        "http.request.method": "POST",
        "url.path": "/pay",
        "http.response.status_code": 503,
        "duration_ms": 8_000.0,
        "log.record.uid": uid,
    }
    return (service, t, "POST /pay failed: payment provider unavailable (503)", attrs, 17)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sink():
    with OtlpSink() as s:
        yield s


@pytest.fixture(scope="module")
def service(tmp_path_factory, pki, sink):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api") / "data",
        grpc_endpoint="localhost:0",
        http_endpoint="localhost:0",
        query_endpoint="localhost:0",
        metrics_endpoint="localhost:0",
        export_endpoint=sink.endpoint,
        bootstrap_rows=600,
        train_epochs=4,
        batch_wait_ms=20,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        auth_tokens=TOKEN,
        # A sensitive threshold: every incident row (and its repeats) is reported until feedback says otherwise.
        false_alerts_per_hour=1000,
        alert_pvalue=0.01,
    )
    svc = Service(settings)
    svc.start()
    channel = grpc.secure_channel(
        f"localhost:{svc.grpc_port}", grpc.ssl_channel_credentials(root_certificates=pki.read("ca"))
    )
    svc.send = lambda records: logs_grpc.LogsServiceStub(channel).Export(
        request(records), timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),)
    )
    for part in range(4):  # 800 rows > bootstrap 600: the first model trains in the background
        svc.send(normal(200, T0 + part * 200 * STEP, seed=part))
    deadline = time.monotonic() + 180
    while svc.pipeline.state != "scoring" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert svc.pipeline.state == "scoring", svc.pipeline.status()
    svc.clock = T0 + 1000 * STEP
    yield svc
    channel.close()
    svc.stop(5)


def send_batch(svc, incidents, n_normal=100):
    """Normal rows with the incidents among them, in one batch; waits until all are stored."""
    start = svc.clock
    rows = normal(n_normal, start, seed=start % 997)
    rows += [make(start + (i + 1) * 7 * STEP + 1) for i, make in enumerate(incidents)]
    svc.clock = start + (n_normal + 10) * STEP
    svc.send(rows)
    assert svc.pipeline.wait_idle(30)


def stored(svc, uid):
    """The stored anomaly record on row `uid` (None when the row was not flagged)."""
    return svc.store.anomaly_by_uid(uid)


def reported(svc, uid):
    record = stored(svc, uid)
    return record is not None and not (record["event"] or {}).get("suppressed_by")


def silenced(svc, uid):
    record = stored(svc, uid)
    return record is not None and bool((record["event"] or {}).get("suppressed_by"))


def cli(capsys, *argv, transport):
    """`otad ARGV --json` against the service; returns (exit code, parsed JSON or stderr)."""
    svc, pki, how = transport
    conn = ["--ca-file", str(pki.ca), "--token", TOKEN]
    conn += (
        ["--http", f"https://localhost:{svc.http_port}"]
        if how == "http"
        else ["--endpoint", f"localhost:{svc.api.port}"]
    )
    capsys.readouterr()
    code = main([*argv, *conn, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


@pytest.fixture(scope="module")
def incident(service):
    send_batch(service, [lambda t: slow("slow-a1", t), lambda t: slow("slow-a2", t)])
    assert reported(service, "slow-a1") and reported(service, "slow-a2")
    return "slow-a1"


@pytest.mark.parametrize("how", ["grpc", "http"])
def test_cli_reads_anomalies_models_and_similar_rows(service, pki, incident, capsys, how):
    t = (service, pki, how)
    code, listing = cli(capsys, "anomalies", "--service", "checkout", transport=t)
    assert code == 0, listing
    uids = [a["source_uid"] for a in listing["anomalies"]]
    assert incident in uids
    finding = next(a for a in listing["anomalies"] if a["source_uid"] == incident)
    assert finding["model_version"] == service.pipeline.status()["model_version"]

    code, one = cli(capsys, "anomaly", finding["uid"], transport=t)
    assert code == 0, one
    assert one["row"]["uid"] == incident and any("duration" in k for k in one["row"]["fields"])
    assert one["model_version"] == finding["model_version"]
    assert 1 <= len(one["neighbors"]) <= 5
    assert all(n["row"]["fields"] and not n.get("is_anomaly") for n in one["neighbors"])  # with their content
    assert any("duration" in d["feature"] for d in one["deltas"]), one["deltas"]

    code, similar = cli(capsys, "similar", incident, "--limit", "5", transport=t)
    assert code == 0, similar
    assert [e["row"]["uid"] for e in similar["events"]][0] == "slow-a2"  # its look-alike is the nearest

    code, models = cli(capsys, "models", transport=t)
    assert code == 0, models
    assert [m["state"] for m in models["models"]] == ["current"]
    assert int(models["models"][0]["rows"]) >= 600
    code, status = cli(capsys, "models", "status", transport=t)
    assert code == 0 and status["current"] == finding["model_version"]


def test_without_the_token_calls_are_refused(service, pki):
    client = ApiClient(Connection(f"localhost:{service.api.port}", ca_file=pki.ca))
    with pytest.raises(ApiCallError) as err:
        client.call("otad.v1.AnomalyService", "ListAnomalies", anomalies_pb2.ListAnomaliesRequest())
    client.close()
    assert err.value.code == "UNAUTHENTICATED"
    context = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://localhost:{service.http_port}/v1/otad/AnomalyService/ListAnomalies"
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), context=context)
    assert http_err.value.code == 401


def test_reflection_lists_the_services_for_grpcurl(service, pki):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(pki.read("ca")), grpc.access_token_call_credentials(TOKEN)
    )
    with grpc.secure_channel(f"localhost:{service.api.port}", credentials) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"otad.v1.AnomalyService", "otad.v1.FeedbackService", "otad.v1.ModelService"} <= services
        assert db.FindFileContainingSymbol("otad.v1.FeedbackService").name == "otad/v1/feedback.proto"


def test_curl_style_get_and_unknown_uid(service, pki, incident):
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://localhost:{service.http_port}/v1/otad"
    headers = {"authorization": f"Bearer {TOKEN}"}
    req = urllib.request.Request(
        f"{base}/AnomalyService/ListAnomalies?page_size=1&service=checkout", headers=headers
    )
    page = json.loads(urllib.request.urlopen(req, context=context).read())
    assert len(page["anomalies"]) == 1 and page["next_page_token"]
    req = urllib.request.Request(
        f"{base}/AnomalyService/ListAnomalies?page_size=1&service=checkout&page_token={page['next_page_token']}",
        headers=headers,
    )
    second = json.loads(urllib.request.urlopen(req, context=context).read())
    assert second["anomalies"][0]["uid"] != page["anomalies"][0]["uid"]
    example = {
        "example": {
            "signal": "logs",
            "service": "checkout",
            "severity_id": 2,
            "fields": {"message": {"string_value": "GET /cart/77 served in 30100.0 ms"}},
        },
        "limit": 3,
    }
    req = urllib.request.Request(
        f"{base}/AnomalyService/SimilarEvents",
        data=json.dumps(example).encode(),
        headers=headers,
        method="POST",
    )
    similar = json.loads(urllib.request.urlopen(req, context=context).read())
    assert (
        len(similar["events"]) == 3 and similar["model_version"] == service.pipeline.status()["model_version"]
    )
    assert all(e["row"]["service"] in ("checkout", "billing") for e in similar["events"])
    req = urllib.request.Request(f"{base}/AnomalyService/GetAnomaly?uid=nope", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=context)
    assert (
        err.value.code == 404 and json.loads(err.value.read())["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    )


def test_mark_normal_silences_look_alikes_from_the_next_batch(service, pki, incident, sink, capsys):
    code, out = cli(
        capsys,
        "feedback",
        "normal",
        incident,
        "--lookalikes",
        "--reason",
        "a known batch job",
        transport=(service, pki, "grpc"),
    )
    assert code == 0, out
    entry = out["feedback"]
    assert entry["kind"] == "FEEDBACK_KIND_NORMAL" and entry["active"]
    assert entry["authenticated_as"].startswith("token:") and entry["by"] == entry["authenticated_as"]
    assert entry["reason"] == "a known batch job" and entry["source_uid"] == incident
    assert entry["reference_rows"] >= 2  # the row and its stored look-alike slow-a2

    send_batch(service, [lambda t: slow("slow-b1", t), lambda t: slow("slow-b2", t)])
    assert silenced(service, "slow-b1") and silenced(service, "slow-b2")
    assert service.feedback.learned >= 1  # the scoring child added them to the k-NN member's reference
    record = stored(service, "slow-b1")
    assert record["event"]["suppressed_by"] == entry["id"] and record["score"] >= record["threshold"]
    sink_uids = {
        kv.value.string_value
        for _, _, rec in sink.log_records()
        for kv in rec.attributes
        if kv.key == "anomaly.source.uid"
    }
    assert not {"slow-b1", "slow-b2"} & sink_uids
    text = (
        urllib.request.urlopen(f"http://localhost:{service.health.port}/metrics", timeout=5).read().decode()
    )
    assert 'otad_feedback_silenced_anomalies_total{kind="normal",signal="logs"} 2.0' in text

    code, listed = cli(capsys, "feedback", "list", transport=(service, pki, "http"))
    assert code == 0 and [f["id"] for f in listed["feedback"]] == [entry["id"]]
    code, _ = cli(
        capsys, "feedback", "revoke", entry["id"], "--reason", "test over", transport=(service, pki, "http")
    )
    assert code == 0
    send_batch(service, [lambda t: slow("slow-c1", t)])
    assert reported(service, "slow-c1")  # revoked: reported again


def test_suppress_holds_only_in_its_scope_and_until_its_ttl(service, pki, capsys):
    send_batch(service, [lambda t: failed("pay-a1", t, "checkout"), lambda t: failed("pay-a2", t, "billing")])
    assert reported(service, "pay-a1") and reported(service, "pay-a2")
    code, out = cli(capsys, "feedback", "suppress", "pay-a1", "--ttl", "6", transport=(service, pki, "grpc"))
    assert code == 0, out
    assert out["feedback"]["service"] == "checkout" and int(out["feedback"]["expires_unix_nano"]) > 0
    expires = int(out["feedback"]["expires_unix_nano"]) / 1e9

    send_batch(service, [lambda t: failed("pay-b1", t, "checkout"), lambda t: failed("pay-b2", t, "billing")])
    assert time.time() < expires, "the batch took longer than the TTL"
    assert silenced(service, "pay-b1")
    assert reported(service, "pay-b2")  # the same incident in another service is still reported

    time.sleep(max(0.0, expires - time.time()) + 0.5)
    send_batch(service, [lambda t: failed("pay-c1", t, "checkout")])
    assert reported(service, "pay-c1")  # the TTL is over


def test_mark_normal_over_http_with_a_scope_and_a_ttl(service, pki, capsys):
    code, out = cli(
        capsys,
        "feedback",
        "normal",
        "pay-c1",
        "--service",
        "billing",
        "--ttl",
        "1m",
        transport=(service, pki, "http"),
    )
    assert code == 0, out
    entry = out["feedback"]
    assert entry["service"] == "billing" and entry["source_uid"] == "pay-c1" and entry["active"]
    assert int(entry["expires_unix_nano"]) - int(entry["created_unix_nano"]) == 60 * 10**9
    code, out = cli(
        capsys, "feedback", "revoke", entry["id"], "--by", "bob", transport=(service, pki, "grpc")
    )
    assert code == 0 and out["feedback"]["revoked_by"] == "bob" and not out["feedback"].get("active")


def test_an_entry_of_another_model_version_is_re_embedded(service, incident):
    """Embeddings are version-specific: an entry made under another version gets its row's embedding under the
    version scoring now before it is matched, and is stored so: the row as that version stored it, or (a row it
    never stored) as the scoring child embeds it now, which lands within the radius of the incident's repeats."""
    import numpy as np

    from receiver.feedback import DEFAULT_RADIUS, Feedback

    version = service.pipeline.status()["model_version"]
    hit = service.store.query_rows(
        version, "uid == {u}", {"u": "slow-a2"}, output_fields=["row", "embedding"]
    )[0]
    expected = np.asarray(hit["embedding"], dtype=np.float32)
    expected /= np.linalg.norm(expected)
    ghost = {**hit["row"], "uid": "never-stored"}
    now = int(time.time() * 1000)
    for uid, source, row in (("old-stored", "slow-a2", hit["row"]), ("old-ghost", "never-stored", ghost)):
        entry = {
            "uid": uid,
            "kind": "suppress",
            "source_uid": source,
            "service": "checkout",
            "created_ms": now,
            "expires_ms": now + 600_000,
            "model_version": "v-retired",
            "revoked": False,
            "record": {"by": "test", "radius": DEFAULT_RADIUS, "row": row},
        }
        service.store.upsert_feedback(entry, [1.0, 0.0, 0.0])  # another version's (narrower) embedding
    fresh = Feedback(service.store, service.metrics, service.settings.models_dir, lambda: version)
    try:
        active = {e.uid: e for e in fresh._for_version(version, service.pipeline.scorer)}
        assert active["old-stored"].version == active["old-ghost"].version == version
        assert abs(float(active["old-stored"].unit @ expected) - 1) < 1e-5  # the stored embedding itself
        # Re-embedded by the scoring child in today's context, the row lies with the incident's recent repeats
        # (measured 0.003-0.005 from slow-b1/c1; 0.023 from slow-a2, scored in the context of its first day).
        for later in ("slow-b1", "slow-c1"):
            (other,) = service.store.query_rows(
                version, "uid == {u}", {"u": later}, output_fields=["embedding"]
            )
            v = np.asarray(other["embedding"], dtype=np.float32)
            assert 1 - float(active["old-ghost"].unit @ v) / float(np.linalg.norm(v)) <= DEFAULT_RADIUS
        for uid in active:
            (stored_entry,) = service.store.feedback_entries(uid=uid)
            assert stored_entry["model_version"] == version and len(stored_entry["embedding"]) == len(
                expected
            )
    finally:
        for uid in ("old-stored", "old-ghost"):
            fresh.revoke(uid, by="test", reason="cleanup")


def test_feedback_holds_across_a_promotion(service, pki, capsys):
    """A retrained version takes over (retrain, then promote by hand through the API): the entry is re-embedded
    for it and its look-alikes stay silenced, under the new version."""
    grpc_t = (service, pki, "grpc")
    code, out = cli(capsys, "feedback", "suppress", "slow-c1", "--ttl", "10m", transport=grpc_t)
    assert code == 0, out
    entry = out["feedback"]
    send_batch(service, [lambda t: slow("slow-d1", t)])
    assert silenced(service, "slow-d1")
    old = service.pipeline.status()["model_version"]
    code, job = cli(capsys, "models", "retrain", "--reason", "feedback across versions", transport=grpc_t)
    assert code == 0, job
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        code, status = cli(capsys, "models", "status", transport=grpc_t)
        if status.get("challenger") or (status["details"].get("last_retrain") or {}).get("state") == "failed":
            break
        send_batch(service, [], n_normal=50)  # traffic for the challenger to score in shadow
    assert status.get("challenger"), status
    code, out = cli(capsys, "models", "promote", status["challenger"], transport=grpc_t)
    assert code == 0 and out["current"] == status["challenger"] != old, out
    send_batch(service, [lambda t: slow("slow-e1", t), lambda t: failed("pay-e1", t, "billing")])
    assert service.pipeline.status()["model_version"] == status["challenger"]
    assert silenced(service, "slow-e1") and reported(service, "pay-e1")  # pay-e1: out of its scope
    code, listed = cli(capsys, "feedback", "list", transport=grpc_t)
    (now,) = [f for f in listed["feedback"] if f["id"] == entry["id"]]
    assert now["model_version"] == status["challenger"]


def test_anomalies_reads_the_store_when_no_service_answers(tmp_path, capsys):
    code = main(["anomalies", "--data-dir", str(tmp_path / "data"), "--endpoint", "localhost:1"])
    out = capsys.readouterr()
    assert code == 0 and "no anomalies stored yet" in out.out
    assert "reading the store directly" in out.err


def test_anomalies_read_from_the_store_keep_every_filter(tmp_path, capsys):
    """Without a service the CLI reads the store itself, through the same listing as the API: --signal,
    --detector and suppression still filter (they were ignored there before)."""
    from storage import MilvusStore

    now = int(time.time() * 1000)
    store = MilvusStore(str(tmp_path / "data" / "milvus.db"), timeout_s=10)
    store.upsert_anomalies(
        [
            {
                "uid": f"e{i}",
                "source_uid": f"r{i}",
                "signal": signal,
                "service": "shop",
                "class_uid": 2004,
                "time_ms": now - 1000 * i,
                "detected_ms": now - 1000 * i,
                "score": 60.0,
                "threshold": 50.0,
                "model_version": "v1",
                "explanation": "x",
                "event": {"detector": detector, **({"suppressed_by": "f1"} if i == 3 else {})},
            }
            for i, (signal, detector) in enumerate(
                [("logs", "pattern"), ("traces", "latency"), ("traces", "errors+knn"), ("traces", "knn")]
            )
        ]
    )
    store.close()

    def listed(*flags: str) -> list[str]:
        argv = ["anomalies", "--data-dir", str(tmp_path / "data"), "--endpoint", "localhost:1", "--json"]
        assert main([*argv, *flags]) == 0
        return [a["uid"] for a in json.loads(capsys.readouterr().out).get("anomalies", [])]

    assert listed() == ["e0", "e1", "e2"]
    assert listed("--signal", "traces") == ["e1", "e2"]
    assert listed("--signal", "traces", "--detector", "knn") == ["e2"]
    assert listed("--signal", "traces", "--include-suppressed") == ["e1", "e2", "e3"]


def test_feedback_survives_a_restart(service, pki, capsys):
    """Last in this module: the service restarts on its data dir and finds every entry, audited."""
    code, before = cli(capsys, "feedback", "list", "--all", transport=(service, pki, "grpc"))
    assert code == 0 and len(before["feedback"]) >= 2
    code, err = cli(capsys, "models", "promote", "v-unknown", transport=(service, pki, "http"))
    assert code == 1 and "NOT_FOUND" in err
    code, job = cli(capsys, "models", "retrain", "--reason", "api test", transport=(service, pki, "grpc"))
    assert code == 0 and job["id"].startswith("retrain-"), job
    code, status = cli(capsys, "models", "status", transport=(service, pki, "http"))
    assert code == 0 and status["details"]["last_retrain"]["job"] == job["id"], status
    settings = service.settings
    service.stop(5)  # the retrain stops at its next epoch
    service.stop = lambda *_: None  # the fixture's stop is done
    again = Service(settings)
    again.start()
    try:
        code, after = cli(capsys, "feedback", "list", "--all", transport=(again, pki, "http"))
        assert code == 0, after
        assert after["feedback"] == before["feedback"]
        revoked = next(f for f in after["feedback"] if f.get("revoke_reason") == "test over")
        assert revoked["revoked"] and revoked["revoked_by"].startswith("token:") and not revoked.get("active")
    finally:
        again.stop(5)
