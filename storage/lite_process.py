"""Milvus Lite in a child process (`python -m storage.lite_server server`, milvus_lite's server with
storage.lite_patch applied) on loopback.

Embedded Milvus Lite runs inside the caller's interpreter, so its inserts and searches compete with the
pipeline for the GIL on a 2-core machine. Run as a child it uses the other core, and the data stays a
local Milvus Lite directory (`<data dir>/milvus.db`, the same layout the embedded mode writes).

Ownership: the server lives only as long as the process that started it (its owner): a watchdog thread in
the server exits when its parent changes (`exit_with_parent`). `<data dir>/milvus-lite.endpoint` records the
server's URI and pid and the owner's pid, start time and boot id (a reused pid is not mistaken for the owner).
`running_endpoint` gives CLI commands the URI while the owner is alive; `LiteServerProcess.start` refuses a
data dir whose owner is alive and stops a server whose owner is gone (one that hung instead of exiting, or
one an older otad left behind, whose endpoint file holds just the URI).

`is_lite_uri` is the one test of whether a Milvus URI names Milvus Lite (a `.db` path) rather than a server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from storage.errors import StorageError

NICE_ENV = "OTAD_LITE_NICE"  # niceness the server child adds to itself (storage/lite_server.py)
PARENT_ENV = "OTAD_LITE_PARENT_PID"  # the server exits when this pid stops being its parent
PARENT_POLL_S = 0.5

logger = logging.getLogger(__name__)

ENDPOINT_FILE = "milvus-lite.endpoint"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")


def is_lite_uri(uri: str) -> bool:
    """Whether `uri` names Milvus Lite (a file path, `.db` by convention) rather than a Milvus server URL."""
    return not uri.startswith(_SERVER_SCHEMES)


class DataDirInUseError(StorageError):
    """A live process owns the Milvus Lite server of this data dir."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_with_parent(parent_pid: int, interval_s: float = PARENT_POLL_S) -> threading.Thread:
    """End this process (`os._exit(1)`) within `interval_s` of `parent_pid` no longer being its parent.

    A polling thread rather than PR_SET_PDEATHSIG, which fires when the parent *thread* that started the
    child exits (the scoring child is started from short-lived threads). It runs while the main thread is
    blocked on a pipe or busy on a batch.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        try:
            os.write(2, f"otad: parent process {parent_pid} is gone; process {os.getpid()} exits\n".encode())
        except OSError:
            pass
        os._exit(1)

    thread = threading.Thread(target=watch, name="otad-exit-with-parent", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------ processes, from /proc
def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...); None when there is no such (non-zombie) process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def _identity(pid: int) -> dict | None:
    """What names a process across pid reuse: pid, start time (clock ticks after boot) and boot id."""
    fields = _stat(pid)
    if fields is None:
        return None
    return {
        "pid": pid,
        "start": int(fields[19]),
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    }


def _is_alive(owner: dict) -> bool:
    return _identity(int(owner.get("pid") or 0)) == owner


def _serves(pid: int, db_path: Path) -> bool:
    """Whether `pid` is a live `storage.lite_server` (or older `milvus_lite`) server of `db_path`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    is_server = "server" in argv and any(a in ("storage.lite_server", "milvus_lite") for a in argv)
    return (
        is_server
        and _stat(pid) is not None
        and any(a == "--data-dir" and b == str(db_path) for a, b in zip(argv, argv[1:], strict=False))
    )


def lite_server_pids(db_path: str | Path) -> list[int]:
    """Every live Milvus Lite server process of `db_path` on this machine."""
    db_path = Path(db_path).expanduser().resolve()
    return [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _serves(int(p.name), db_path)
    ]


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout_s
    while _stat(pid) is not None:
        if time.monotonic() > deadline:
            logger.warning("Milvus Lite server %d did not stop in %.0fs; killing it", pid, timeout_s)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = float("inf")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ the endpoint file
def _endpoint_path(db_path: Path) -> Path:
    return db_path.parent / ENDPOINT_FILE


def _read_endpoint(path: Path) -> dict | None:
    """The endpoint record; an older otad's file (just the URI) reads as a record without owner or pid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"uri": text.strip()}


def _owner_in_use(record: dict, db_path: Path) -> str | None:
    """Who holds this data dir ("another otad serve (pid N)"), or None when the owner is gone."""
    owner = record.get("owner")
    if owner is not None:
        return f"another {record.get('role') or 'process'} (pid {owner['pid']})" if _is_alive(owner) else None
    # An older otad recorded no owner: a server still attached to a live parent is in use.
    for pid in lite_server_pids(db_path):
        stat = _stat(pid)
        parent = int(stat[1]) if stat else 0
        if parent > 1:
            return f"another process (pid {parent})"
    return None


def reclaim(db_path: str | Path, timeout_s: float = 10.0) -> None:
    """Make sure no live process owns the Lite server of `db_path`; stop a server its owner left behind.

    Raises:
        DataDirInUseError: a live process (another `otad serve`) owns it.
    """
    db_path = Path(db_path).expanduser().resolve()
    path = _endpoint_path(db_path)
    record = _read_endpoint(path)
    if record is None:
        return
    holder = _owner_in_use(record, db_path)
    if holder is not None:
        raise DataDirInUseError(f"{holder} is using {db_path.parent}")
    owner = (record.get("owner") or {}).get("pid", "unknown")
    pids = [record["pid"]] if record.get("pid") else lite_server_pids(db_path)
    pids = [p for p in pids if _serves(int(p), db_path)]
    for pid in pids:
        _terminate(int(pid), timeout_s)
    if pids:
        logger.warning(
            "stopped Milvus Lite server %s of %s: its owner (pid %s) is gone",
            ", ".join(map(str, pids)),
            db_path.parent,
            owner,
        )
    else:
        logger.info("removed %s: its owner (pid %s) and its server are gone", path, owner)
    path.unlink(missing_ok=True)


def running_endpoint(db_path: str | Path) -> str | None:
    """The URI of the Lite server a live process (a running `otad serve`) holds for this data, if any."""
    path = _endpoint_path(Path(db_path).expanduser().resolve())
    record = _read_endpoint(path)
    if record is None or not record.get("uri") or (record.get("owner") and not _is_alive(record["owner"])):
        return None
    uri = record["uri"]
    host, _, port = uri.removeprefix("http://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return uri
    except (OSError, ValueError):
        return None


class LiteServerProcess:
    """Start/stop a Milvus Lite server for one data directory; `uri` is what MilvusStore connects to.

    `role` names this process in the error another process gets while this one owns the data dir.
    """

    def __init__(self, db_path: str | Path, *, max_workers: int = 8, nice: int = 0, role: str = "process"):
        self.db_path = Path(db_path).expanduser().resolve()
        if self.db_path.suffix != ".db":
            raise StorageError(f"Milvus Lite path must end in .db (got {str(db_path)!r})")
        self.max_workers = max_workers
        self.nice = nice  # added to the child's niceness: the receiver gets the CPU first when cores are busy
        self.role = role
        self.proc: subprocess.Popen | None = None
        self.uri = ""
        self._claimed = False  # the endpoint file is this object's

    def start(self, timeout_s: float = 60.0, port: int | None = None) -> str:
        """Start the server (on `port`, default a free one) and wait until it listens; returns its URI.

        Raises:
            DataDirInUseError: another live process owns this data dir's server (see `reclaim`).
            StorageError: the server did not start.
        """
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        reclaim(self.db_path)
        self.uri = ""
        self._write_endpoint(exclusive=True)  # claimed: a concurrent start finds a live owner
        self._claimed = True
        try:
            port = self._launch(timeout_s, port or _free_port())
        except BaseException:
            self.stop()
            raise
        assert self.proc is not None  # _launch started it
        self.uri = f"http://127.0.0.1:{port}"
        self._write_endpoint()
        logger.info(
            "Milvus Lite server for %s listening on %s (pid %d)", self.db_path, self.uri, self.proc.pid
        )
        return self.uri

    def _launch(self, timeout_s: float, port: int) -> int:
        log_path = self.db_path.parent / "milvus-lite.log"
        with open(log_path, "ab") as log:  # the child holds its own copy
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "storage.lite_server",
                    "server",
                    "--data-dir",
                    str(self.db_path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--max-workers",
                    str(self.max_workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, NICE_ENV: str(self.nice), PARENT_ENV: str(os.getpid())},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise StorageError(
                    f"Milvus Lite server for {self.db_path} exited (code {self.proc.returncode}); "
                    f"is another otad using this data dir? Last output: {tail}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return port
            except OSError:
                time.sleep(0.1)
        raise StorageError(f"Milvus Lite server for {self.db_path} did not listen within {timeout_s:.0f}s")

    def _write_endpoint(self, exclusive: bool = False) -> None:
        path = _endpoint_path(self.db_path)
        record = {
            "uri": self.uri,
            "pid": self.proc.pid if self.proc else None,
            "role": self.role,
            "owner": _identity(os.getpid()),
        }
        if exclusive:
            try:
                with open(path, "x") as f:
                    f.write(json.dumps(record))
            except FileExistsError:
                raise DataDirInUseError(
                    f"another process is starting a Milvus Lite server in {path.parent}"
                ) from None
            return
        tmp = path.with_name(f".{ENDPOINT_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and remove the endpoint file. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._claimed:
            _endpoint_path(self.db_path).unlink(missing_ok=True)
            self._claimed = False
