"""Milvus Lite in a child process (`python -m storage.lite_server server`, milvus_lite's server with
storage.lite_patch applied) on loopback.

Embedded Milvus Lite runs inside the caller's interpreter, so its inserts and searches compete with the
pipeline for the GIL on a 2-core machine. Run as a child it uses the other core, and the data stays a
local Milvus Lite directory (`<data dir>/milvus.db`, the same layout the embedded mode writes).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from storage.errors import StorageError

NICE_ENV = "OTAD_LITE_NICE"  # niceness the server child adds to itself (storage/lite_server.py)

logger = logging.getLogger(__name__)

ENDPOINT_FILE = "milvus-lite.endpoint"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiteServerProcess:
    """Start/stop a Milvus Lite server for one data directory; `uri` is what MilvusStore connects to."""

    def __init__(self, db_path: str | Path, *, max_workers: int = 8, nice: int = 0):
        self.db_path = Path(db_path).expanduser().resolve()
        if self.db_path.suffix != ".db":
            raise StorageError(f"Milvus Lite path must end in .db (got {str(db_path)!r})")
        self.max_workers = max_workers
        self.nice = nice  # added to the child's niceness: the receiver gets the CPU first when cores are busy
        self.proc: subprocess.Popen | None = None
        self.uri = ""

    def start(self, timeout_s: float = 60.0, port: int | None = None) -> str:
        """Start the server (on `port`, default a free one) and wait until it listens; returns its URI."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        log_path = self.db_path.parent / "milvus-lite.log"
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "storage.lite_server", "server", "--data-dir", str(self.db_path), "--host", "127.0.0.1",
             "--port", str(port), "--max-workers", str(self.max_workers)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, NICE_ENV: str(self.nice)},
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise StorageError(f"Milvus Lite server for {self.db_path} exited (code {self.proc.returncode}); "
                                   f"is another otad using this data dir? Last output: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise StorageError(f"Milvus Lite server for {self.db_path} did not listen within {timeout_s:.0f}s")
        self.uri = f"http://127.0.0.1:{port}"
        (self.db_path.parent / ENDPOINT_FILE).write_text(self.uri)
        logger.info("Milvus Lite server for %s listening on %s (pid %d)", self.db_path, self.uri, self.proc.pid)
        return self.uri

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        try:
            (self.db_path.parent / ENDPOINT_FILE).unlink()
        except FileNotFoundError:
            pass


def running_endpoint(db_path: str | Path) -> str | None:
    """The URI of a Lite server another process (a running `otad serve`) holds for this data, if any."""
    path = Path(db_path).expanduser().resolve().parent / ENDPOINT_FILE
    if not path.exists():
        return None
    uri = path.read_text().strip()
    host, _, port = uri.removeprefix("http://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return uri
    except (OSError, ValueError):
        return None
