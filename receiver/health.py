"""Self-observability over HTTP: /metrics (Prometheus), /healthz (liveness), /readyz (readiness) on
OTAD_METRICS_ENDPOINT, optionally over TLS (OTAD_METRICS_TLS: the OTLP servers' certificate) and with bearer tokens
on /metrics (OTAD_METRICS_AUTH: the OTLP servers' tokens; the probes stay open, as kubelet sends no header).

/healthz answers 503 when a thread the service cannot work without has died (the pipeline worker, the emitter):
a restart is the fix. /readyz answers 503 while the service should not get new data: stopping, the pipeline
stalled, or Milvus unreachable (a watcher pings it in the background; the spool keeps accepting meanwhile, see
docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from receiver.otlp.auth import BearerAuth

__all__ = ["HealthServer", "MilvusWatch"]

logger = logging.getLogger(__name__)


class MilvusWatch:
    """Pings Milvus every `interval_s` from its own thread; `reachable` is the last answer (no probe waits)."""

    def __init__(
        self, ping: Callable[[], bool], interval_s: float = 5.0, on_tick: Callable[[], None] | None = None
    ) -> None:
        self._ping, self.interval_s, self._on_tick = ping, interval_s, on_tick
        self.reachable = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otad-milvus-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        try:
            ok = bool(self._ping())
        except Exception:  # a ping must never kill the watcher
            ok = False
        if ok != self.reachable:
            (logger.info if ok else logger.warning)(
                "Milvus is %s; /readyz reports %s",
                "reachable again" if ok else "unreachable",
                "ready" if ok else "not ready",
            )
        self.reachable = ok
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:
                    logger.exception("publishing the health status failed")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # Address reuse only for a fixed port (taken again at once after a restart): on port 0 it lets the kernel
        # pick an outgoing connection's local port, and listen() then fails with "address in use".
        self.allow_reuse_address = self.server_address[1] != 0
        super().server_bind()

    def handle_error(self, request, client_address) -> None:
        """A client that hung up or spoke plaintext to TLS: one debug line, not a traceback on stderr."""
        logger.debug("metrics port: request from %s failed", client_address[0], exc_info=True)


class HealthServer:
    """/metrics, /healthz, /readyz. `status()` gives the JSON body; its `alive` and `ready` keys the codes."""

    def __init__(
        self,
        endpoint: str,
        registry: CollectorRegistry,
        status: Callable[[], dict],
        *,
        ssl_context: ssl.SSLContext | None = None,
        auth: BearerAuth | None = None,
    ):
        host, _, port = endpoint.rpartition(":")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.startswith("/metrics"):
                    reason = auth.check(self.headers.get("Authorization")) if auth else None
                    if reason is not None:
                        body, ctype, code = (
                            f"unauthenticated: {reason} bearer token\n".encode(),
                            "text/plain",
                            401,
                        )
                    else:
                        body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith(("/healthz", "/readyz")):
                    st = status()
                    ok = st.get("alive", True) if self.path.startswith("/healthz") else st.get("ready")
                    body, ctype, code = json.dumps(st).encode(), "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if code == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="otad"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        try:
            self.httpd = _Server((host or "0.0.0.0", int(port)), Handler)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {endpoint} (OTAD_METRICS_ENDPOINT): {exc.strerror or exc}"
            ) from None
        if ssl_context is not None:
            # The handshake happens in the request's thread: a slow client never holds up the accept loop.
            self.httpd.socket = ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.tls = ssl_context is not None
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="otad-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
