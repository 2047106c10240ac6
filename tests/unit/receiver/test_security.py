"""TLS / auth / limits configuration, the bearer-token check, bounded gzip, and the one status-mapping table."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from pydantic import ValidationError

from receiver.otlp.auth import BearerAuth
from receiver.otlp.errors import (
    InvalidInputError,
    Outcome,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
    http_status,
    outcome_of,
    status_proto,
)
from receiver.otlp.http_server import _Refusal, gunzip_limited
from receiver.otlp.servers import load_security
from receiver.otlp.tls import emitter_credentials
from receiver.settings import ConfigError, Settings
from tests.certs import make_pki

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def config_error(**kw) -> str:
    with pytest.raises(ValidationError) as err:
        Settings(**kw)
    return err.value.errors()[0]["msg"]


def test_defaults_are_plaintext_without_auth():
    settings = Settings()
    assert settings.http_endpoint == "localhost:4318" and settings.grpc_endpoint == "localhost:4317"
    assert load_security(settings) == (None, None)
    assert emitter_credentials(settings) is None and settings.export_header_map == {}


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({"tls_cert_file": "c.pem"}, ["OTAD_TLS_CERT_FILE is set but OTAD_TLS_KEY_FILE is not"]),
        ({"tls_key_file": "k.pem"}, ["OTAD_TLS_KEY_FILE is set but OTAD_TLS_CERT_FILE is not"]),
        ({"tls_client_ca_file": "ca.pem"}, ["OTAD_TLS_CLIENT_CA_FILE", "set OTAD_TLS_CERT_FILE"]),
        (
            {"export_ca_file": "ca.pem", "export_insecure": True},
            ["OTAD_EXPORT_CA_FILE", "set OTAD_EXPORT_INSECURE=false"],
        ),
        ({"export_headers": "authorization"}, ["OTAD_EXPORT_HEADERS must be KEY=VALUE"]),
    ],
)
def test_inconsistent_settings_name_the_variable_and_the_fix(kw, names):
    message = config_error(**kw)
    assert all(n in message for n in names), message


def test_unreadable_or_mismatched_tls_files_stop_startup(pki, tmp_path):
    with pytest.raises(ConfigError, match=r"OTAD_TLS_CERT_FILE \(.*nope.pem\) cannot be read"):
        load_security(Settings(tls_cert_file=tmp_path / "nope.pem", tls_key_file=pki.server_key))
    with pytest.raises(ConfigError, match="OTAD_TLS_KEY_FILE .* is not PEM"):
        (tmp_path / "key.txt").write_text("hello")
        load_security(Settings(tls_cert_file=pki.server_cert, tls_key_file=tmp_path / "key.txt"))
    with pytest.raises(ConfigError, match="do not form a usable pair"):
        load_security(Settings(tls_cert_file=pki.server_cert, tls_key_file=pki.client_key))
    tls, auth = load_security(
        Settings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca)
    )
    assert tls.client_ca == pki.read("ca") and auth is None


def test_token_file_problems_stop_startup(tmp_path):
    with pytest.raises(ConfigError, match="OTAD_AUTH_TOKEN_FILE .* cannot be read"):
        load_security(Settings(auth_token_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_security(Settings(auth_token_file=tmp_path / "empty"))


def test_bearer_check():
    auth = BearerAuth(["alpha", "beta"])
    assert auth.check("Bearer alpha") is None and auth.check("bearer beta") is None
    assert auth.check(None) == "missing" and auth.check("") == "missing"
    assert auth.check("Basic alpha") == "malformed" and auth.check("Bearer") == "malformed"
    assert auth.check("Bearer alph") == "wrong" and auth.check("Bearer alphaa") == "wrong"
    assert BearerAuth.from_settings(Settings(auth_tokens=" a , b ,")).check("Bearer b") is None


def test_export_headers_and_ca(pki):
    settings = Settings(
        export_headers="Authorization=Bearer x=y, tenant=a", export_insecure=False, export_ca_file=pki.ca
    )
    assert settings.export_header_map == {"authorization": "Bearer x=y", "tenant": "a"}
    assert isinstance(emitter_credentials(settings), grpc.ChannelCredentials)


def test_gunzip_is_bounded_after_decompression():
    limit = 1024 * 1024
    assert gunzip_limited(gzip.compress(b"a" * limit), limit) == b"a" * limit
    assert (
        gunzip_limited(gzip.compress(b"ab") + gzip.compress(b"cd"), limit) == b"abcd"
    )  # concatenated members
    with pytest.raises(_Refusal) as err:
        gunzip_limited(gzip.compress(b"a" * (limit + 1)), limit)
    assert err.value.status == 413
    with pytest.raises(_Refusal) as err:
        gunzip_limited(gzip.compress(b"a" * 1000)[:-12], limit)
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("exc", "code", "http"),
    [
        (UnavailableError("full", 7), grpc.StatusCode.UNAVAILABLE, 503),
        (InvalidInputError("bad"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (TooLargeError("big"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (UnauthenticatedError("who"), grpc.StatusCode.UNAUTHENTICATED, 401),
        (KeyError("bug"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_status_mapping_table(exc, code, http):
    outcome = outcome_of(exc)
    assert outcome.code == code and http_status(outcome) == http
    status = status_proto(outcome)
    assert status.code == code.value[0]
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == (1 if code == grpc.StatusCode.UNAVAILABLE else 0)
    if code == grpc.StatusCode.INTERNAL:
        assert status.message == "internal error: KeyError"  # no internals leak to clients
    assert http_status(Outcome()) == 200 and Outcome(rejected=1).label == "partial"


def test_otad_serve_refuses_bad_tls_config_with_one_sentence(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTAD_")}
    env.update(
        OTAD_DATA_DIR=str(tmp_path),
        OTAD_TLS_CERT_FILE=str(tmp_path / "missing.pem"),
        OTAD_TLS_KEY_FILE=str(tmp_path / "missing-key.pem"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("otad:")]
    assert "OTAD_TLS_CERT_FILE" in line and "point it at a PEM certificate" in line
    assert not (tmp_path / "milvus.db").exists()  # stopped before anything was started
