"""Export configuration by the OTel SDK conventions (receiver/export_config.py): precedence, URL forms, defaults,
and one sentence naming the variable for each unusable value. The environment is passed in, never read."""

from __future__ import annotations

import pytest

from receiver.export_config import parse_key_values, resolve_export
from receiver.settings import ConfigError, Settings

G = "OTEL_EXPORTER_OTLP_"
L = "OTEL_EXPORTER_OTLP_LOGS_"


def resolve(env: dict[str, str], **settings):
    return resolve_export(Settings(**settings), environ=env)


def test_nothing_set_means_stored_only():
    config = resolve({})
    assert config.endpoint is None and config.protocol == "grpc" and config.timeout_s == 10.0


@pytest.mark.parametrize(
    ("env", "settings", "endpoint", "insecure"),
    [
        ({G + "ENDPOINT": "http://collector:4317"}, {}, "collector:4317", True),
        ({G + "ENDPOINT": "https://collector"}, {}, "collector:4317", False),
        ({G + "ENDPOINT": "collector:4317"}, {}, "collector:4317", True),  # HOST:PORT: plaintext by default
        ({G + "ENDPOINT": "collector:4317", G + "INSECURE": "false"}, {}, "collector:4317", False),
        ({G + "ENDPOINT": "https://collector:4317", G + "INSECURE": "true"}, {}, "collector:4317", True),
        ({G + "ENDPOINT": "http://a:1", L + "ENDPOINT": "http://b:2"}, {}, "b:2", True),  # logs beat generic
        ({L + "ENDPOINT": "http://b:2"}, {"export_endpoint": "c:3"}, "c:3", True),  # OTAD_ beats both
        ({}, {"export_endpoint": "https://[::1]:4317"}, "[::1]:4317", False),
    ],
)
def test_grpc_endpoint_and_transport_security(env, settings, endpoint, insecure):
    config = resolve(env, **settings)
    assert (config.endpoint, config.insecure) == (endpoint, insecure)


@pytest.mark.parametrize(
    ("env", "settings", "url"),
    [
        ({G + "ENDPOINT": "http://collector:4318"}, {}, "http://collector:4318/v1/logs"),
        ({G + "ENDPOINT": "https://gw/otlp/"}, {}, "https://gw:4318/otlp/v1/logs"),  # appended to the path
        ({L + "ENDPOINT": "https://gw:443/custom"}, {}, "https://gw:443/custom"),  # signal-specific: as is
        ({L + "ENDPOINT": "http://gw:4318"}, {}, "http://gw:4318/"),  # as is, even without a path
        ({}, {"export_endpoint": "collector:4318"}, "http://collector:4318/v1/logs"),
        ({}, {"export_endpoint": "https://gw:9/in/logs"}, "https://gw:9/in/logs"),
    ],
)
def test_http_endpoint_gets_v1_logs_on_the_generic_form_only(env, settings, url):
    config = resolve({G + "PROTOCOL": "http/protobuf", **env}, **settings)
    assert config.protocol == "http/protobuf" and config.endpoint == url


def test_headers_timeout_and_files_by_precedence(tmp_path):
    env = {
        G + "ENDPOINT": "https://c:4317",
        G + "HEADERS": "authorization=Bearer%20generic",
        L + "HEADERS": "authorization=Bearer%20logs,x-tenant=a%2Cb",
        G + "TIMEOUT": "2500",
        L + "CERTIFICATE": "/etc/ca.pem",
    }
    config = resolve(env)
    assert config.headers == {"authorization": "Bearer logs", "x-tenant": "a,b"}
    assert config.timeout_s == 2.5 and str(config.ca_file) == "/etc/ca.pem"
    assert config.sources["ca"] == L + "CERTIFICATE"
    overridden = resolve(env, export_headers="authorization=Bearer%20otad", export_timeout_s=4)
    assert overridden.headers == {"authorization": "Bearer otad"} and overridden.timeout_s == 4.0


def test_resource_attributes_that_name_the_producer_stay_off_the_event():
    config = resolve(
        {
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,service.name=otad,k8s.cluster.name=c%201"
        }
    )
    assert config.resource == {"deployment.environment.name": "prod", "k8s.cluster.name": "c 1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {G + "ENDPOINT": "grpc://c:4317"},
            r"^OTEL_EXPORTER_OTLP_ENDPOINT \('grpc://c:4317'\) must be an http",
        ),
        (
            {L + "ENDPOINT": "collector"},
            r"^OTEL_EXPORTER_OTLP_LOGS_ENDPOINT \('collector'\) must be HOST:PORT",
        ),
        ({G + "ENDPOINT": "http://c:99999"}, r"^OTEL_EXPORTER_OTLP_ENDPOINT .* port"),
        (
            {G + "PROTOCOL": "http/json"},
            r"^OTEL_EXPORTER_OTLP_PROTOCOL \('http/json'\) must be grpc or http/protobuf",
        ),
        ({G + "TIMEOUT": "10s"}, r"^OTEL_EXPORTER_OTLP_TIMEOUT \('10s'\) must be a number of milliseconds"),
        ({G + "TIMEOUT": "0"}, r"^OTEL_EXPORTER_OTLP_TIMEOUT \('0'\) must be > 0"),
        ({L + "INSECURE": "yes"}, r"^OTEL_EXPORTER_OTLP_LOGS_INSECURE \('yes'\) must be true or false"),
        ({G + "HEADERS": "novalue"}, r"^OTEL_EXPORTER_OTLP_HEADERS must be KEY=VALUE pairs"),
        (
            {G + "ENDPOINT": "http://c:4317", G + "CERTIFICATE": "/ca.pem"},
            r"^OTEL_EXPORTER_OTLP_CERTIFICATE is set but the export is plaintext",
        ),
        (
            {G + "ENDPOINT": "https://c", G + "CLIENT_CERTIFICATE": "/c.pem"},
            r"^OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set but no client key",
        ),
        ({"OTEL_RESOURCE_ATTRIBUTES": "=x"}, r"^OTEL_RESOURCE_ATTRIBUTES must be KEY=VALUE"),
    ],
)
def test_unusable_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        resolve(env)


def test_parse_key_values_skips_empty_items():
    assert parse_key_values("a=1,,b=%3D", "X") == {"a": "1", "b": "="}


@pytest.mark.parametrize(
    ("env", "settings", "compression"),
    [
        ({}, {}, "gzip"),
        ({G + "COMPRESSION": "none"}, {}, "none"),
        ({G + "COMPRESSION": "none", L + "COMPRESSION": "GZIP"}, {}, "gzip"),  # logs beat generic
        ({L + "COMPRESSION": "gzip"}, {"export_compression": "none"}, "none"),  # OTAD_ beats both
    ],
)
def test_compression(env, settings, compression):
    assert resolve(env, **settings).compression == compression


def test_unknown_compression_names_the_variable():
    with pytest.raises(
        ConfigError, match=r"^OTEL_EXPORTER_OTLP_LOGS_COMPRESSION \('br'\) must be gzip or none"
    ):
        resolve({L + "COMPRESSION": "br"})
