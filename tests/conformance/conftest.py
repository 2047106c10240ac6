"""Real otad services for the conformance suite: plaintext, TLS + bearer auth, and mTLS, each with its own
Milvus Lite in a temp dir and every endpoint on port 0. Module-scoped: starting one costs ~3 s."""

from __future__ import annotations

import pytest

from receiver.service import Service
from receiver.settings import Settings
from tests.certs import Pki, make_pki

TOKENS = ("old-token-3f9a", "new-token-77c1")  # two lines in the token file: a rotation in progress
ENV_TOKEN = "env-token-b0d2"


def start_service(data_dir, **overrides) -> Service:
    options = {
        "bootstrap_rows": 1_000_000,
        "queue_rows": 1000,
        "batch_rows": 1000,
        "batch_wait_ms": 20,
        **overrides,
    }
    settings = Settings(
        data_dir=data_dir,
        grpc_endpoint="localhost:0",
        http_endpoint="localhost:0",
        metrics_endpoint="localhost:0",
        milvus_lite_process=False,
        **options,
    )
    service = Service(settings)
    service.start()
    return service


@pytest.fixture(scope="session")
def tokens() -> dict[str, str]:
    """The bearer tokens the tls_auth service accepts, by where they are configured."""
    return {"file-old": TOKENS[0], "file-new": TOKENS[1], "env": ENV_TOKEN}


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("plain") / "data")
    yield service
    service.stop(5)


@pytest.fixture(scope="module")
def tls_auth(tmp_path_factory, pki):
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text("# rotated weekly\n" + "\n".join(TOKENS) + "\n")
    service = start_service(
        tmp_path_factory.mktemp("tls") / "data",
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        auth_token_file=token_file,
        auth_tokens=ENV_TOKEN,
    )
    yield service
    service.stop(5)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki):
    service = start_service(
        tmp_path_factory.mktemp("mtls") / "data",
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    )
    yield service
    service.stop(5)
