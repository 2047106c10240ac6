"""Score in a child process: featurize > embed > k-NN score > explain run outside the service's interpreter.

On the service's interpreter the gRPC handlers, the OTLP mapper, the spool and the Milvus writes share one
GIL with scoring, which is ~100 µs of Python per record: Export calls then wait for the GIL, and the
pipeline cannot use a second core. `ScoringProcess` runs a `Scorer` for one model version in a child
(`multiprocessing` spawn; the model is loaded from its saved files, never pickled) and has the same
`score(rows)` as the in-process `Scorer`. The child holds the online state (context tracker, the reference
rows it learns), as the in-process scorer did; a restarted child starts from the saved model, as a
restarted service does.

Rows go to the child and anomalies come back as named columns (`model.schema.rows_to_columns`,
`anomalies_to_columns`), and the two ends compare `BOUNDARY_VERSION` at the handshake.

Lifecycle: the child ignores SIGINT/SIGTERM (the service handles them and drains first); it exits when told
to (`close`), when the service's end of the pipe closes, or within half a second of the service dying by
any signal, idle or mid-batch (`_exit_with_parent`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from model.calibration import pvalue_to_score
from model.heap import settle_heap
from model.schema import (
    BOUNDARY_VERSION,
    BoundaryError,
    Row,
    anomalies_from_columns,
    anomalies_to_columns,
    check_boundary_version,
    rows_from_columns,
    rows_to_columns,
)
from model.scorer import ScoredBatch
from model.version import ModelVersion

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # loading torch + faiss + a 100k-row reference on a busy 2-core machine
PARENT_POLL_S = 0.5


class ScoringProcessError(RuntimeError):
    """The scoring child could not start, died, or failed on a batch."""


class ScoringProcess:
    """A `Scorer` for the model version saved at `path`, running in a child process.

    Args:
        mv: the model version, as this process knows it (`mv.version` names the rows collection; the
            child loads its own copy from `path`).
        path: the saved model version directory (`ModelVersion.save`).
        k, alert_pvalue, max_rows: as for `ModelVersion.load`.
        threads: torch intra-op threads in the child.

    Raises:
        ScoringProcessError: the child did not load the model, or speaks another BOUNDARY_VERSION (the
            child's error is in the message).
    """

    def __init__(
        self,
        mv: ModelVersion,
        path: Path,
        *,
        k: int,
        alert_pvalue: float,
        max_rows: int,
        threads: int = 1,
        nice: int = 0,
        start_timeout_s: float = START_TIMEOUT_S,
        false_alerts_per_hour: float | None = None,
        state_save_s: float = 60.0,
        series_max: int | None = None,
    ):
        self.mv = mv
        self._lock = threading.Lock()  # one batch at a time on the pipe; close waits for the batch in hand
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            name=f"otad-score-{mv.version}",
            daemon=True,
            args=(
                child,
                str(path),
                k,
                alert_pvalue,
                max_rows,
                threads,
                nice,
                os.getpid(),
                BOUNDARY_VERSION,
                false_alerts_per_hour,
                state_save_s,
                series_max,
            ),
        )
        self._proc.start()
        child.close()
        try:
            reply = self._recv(start_timeout_s)
        except ScoringProcessError:
            self.close(0)
            raise
        try:
            self._check_ready(reply)
        except ScoringProcessError:
            self.close(0)
            raise
        logger.info("scoring model %s in process %d", mv.version, self._proc.pid)

    def _check_ready(self, reply: tuple[Any, ...]) -> None:
        """The handshake: ("ready", model version, boundary version), or the child's reason for not starting."""
        if reply[0] == "mismatch":
            raise ScoringProcessError(f"the scoring process cannot serve this process: {reply[1]}")
        if reply[0] != "ready":
            raise ScoringProcessError(
                f"the scoring process could not load model {self.mv.version}: {reply[1]}"
            )
        try:
            check_boundary_version(reply[2] if len(reply) > 2 else None)
        except BoundaryError as exc:
            raise ScoringProcessError(f"the scoring process cannot serve this process: {exc}") from None
        if reply[1] != self.mv.version:
            raise ScoringProcessError(f"the scoring process loaded model {reply[1]}, not {self.mv.version}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    @property
    def threshold(self) -> float:
        return float(pvalue_to_score(self.mv.ensemble.alert_pvalue))

    def score(self, rows: list[Row], now_unix_nano: int | None = None) -> ScoredBatch:
        """As `Scorer.score`; the anomalies carry these very `rows`.

        Raises:
            ScoringProcessError: the child died or failed on this batch.
        """
        columns = rows_to_columns(rows)
        with self._lock:
            try:
                self._conn.send(("score", columns, now_unix_nano))
            except (OSError, ValueError) as exc:
                raise ScoringProcessError(f"the scoring process is gone: {exc}") from None
            reply = self._recv(None)
        if reply[0] != "ok":
            raise ScoringProcessError(f"scoring failed in the scoring process: {reply[1]}")
        _, emb, raw, scores, flagged, found, notices, members, weights = reply
        return ScoredBatch(
            rows, emb, raw, scores, flagged, anomalies_from_columns(found, rows), notices, members, weights
        )

    def learn_normal(self, rows: list[Row]) -> int:
        """As `Scorer.learn_normal`, in the child (operator feedback: the rows join the normal reference).

        Raises:
            ScoringProcessError: the child died or failed.
        """
        return int(self._feedback("learn", rows))

    def embed_rows(self, rows: list[Row]) -> np.ndarray:
        """As `Scorer.embed_rows`, in the child (feedback re-embeds its row for a new version).

        Raises:
            ScoringProcessError: the child died or failed.
        """
        return np.asarray(self._feedback("embed", rows), dtype=np.float32)

    def _feedback(self, kind: str, rows: list[Row]) -> Any:
        """The two feedback messages: (kind, row columns) -> ("ok", result) or ("failed", why)."""
        with self._lock:
            try:
                self._conn.send((kind, rows_to_columns(rows)))
            except (OSError, ValueError) as exc:
                raise ScoringProcessError(f"the scoring process is gone: {exc}") from None
            reply = self._recv(None)
        if reply[0] != "ok":
            raise ScoringProcessError(f"{kind} failed in the scoring process: {reply[1]}")
        return reply[1]

    def _recv(self, timeout_s: float | None) -> tuple[Any, ...]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.5):
            if not self._proc.is_alive():
                break  # poll once more below: the reply may have arrived just before it exited
            if deadline is not None and time.monotonic() > deadline:
                raise ScoringProcessError(f"the scoring process did not answer within {timeout_s:.0f}s")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode
            raise ScoringProcessError(
                f"the scoring process exited (code {code}): {exc or 'pipe closed'}"
            ) from None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child (after the batch it is on); kill it if it does not exit in time. Safe to call twice."""
        with self._lock:
            if self._proc.is_alive():
                try:
                    self._conn.send(("stop",))
                except (OSError, ValueError):
                    pass
                self._proc.join(timeout_s)
                if self._proc.is_alive():
                    logger.warning(
                        "scoring process %d did not stop in %.0fs; killing it", self._proc.pid, timeout_s
                    )
                    self._proc.kill()
                    self._proc.join(5)
            self._conn.close()


def _serve(
    conn: Connection,
    path: str,
    k: int,
    alert_pvalue: float,
    max_rows: int,
    threads: int,
    nice: int = 0,
    parent_pid: int | None = None,
    boundary_version: int = BOUNDARY_VERSION,
    false_alerts_per_hour: float | None = None,
    state_save_s: float = 60.0,
    series_max: int | None = None,
) -> None:
    """The child's loop: check the parent's `boundary_version`, load the model, then answer
    `("score", row columns, now)` until `("stop",)` or EOF. It exits at once when `parent_pid` stops being its
    parent."""
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent drains
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:
        os.nice(nice)  # behind the queue: the receiver's Export calls get the CPU first
    try:
        check_boundary_version(boundary_version)
    except BoundaryError as exc:
        conn.send(("mismatch", str(exc)))
        return
    from model.scorer import Scorer

    try:
        mv = ModelVersion.load(
            Path(path),
            k=k,
            alert_pvalue=alert_pvalue,
            max_rows=max_rows,
            false_alerts_per_hour=false_alerts_per_hour,
            series_max=series_max,
        )
        scorer = Scorer(mv, threads=threads)
        scorer.restore(Path(path))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    settle_heap(collect=True)
    conn.send(("ready", mv.version, BOUNDARY_VERSION))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the service is gone
        if msg[0] == "stop":
            scorer.save(Path(path))
            return
        reply: tuple[Any, ...]
        if msg[0] in ("learn", "embed"):  # operator feedback: (kind, row columns) -> ("ok", result)
            conn.send(_feedback(scorer, msg[0], msg[1]))
            continue
        _, columns, now = msg
        try:
            scored = scorer.score(rows_from_columns(columns), now)
            found = anomalies_to_columns(scored.anomalies, np.flatnonzero(scored.is_anomaly).tolist())
            reply = (
                "ok",
                scored.embeddings,
                scored.raw,
                scored.scores,
                scored.is_anomaly,
                found,
                scored.notices,
                scored.members,
                scored.weights,
            )
            scorer.save_if_due(Path(path), state_save_s)
        except Exception:
            reply = ("failed", traceback.format_exc(limit=8))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _feedback(scorer: Any, kind: str, columns: Any) -> tuple[Any, ...]:
    """learn: rows an operator marked normal join the normal reference (("ok", rows added)); embed: their
    embeddings (("ok", array)); ("failed", why) when it fails."""
    try:
        rows = rows_from_columns(columns)
        return ("ok", scorer.learn_normal(rows) if kind == "learn" else scorer.embed_rows(rows))
    except Exception:
        return ("failed", traceback.format_exc(limit=8))


def _exit_with_parent(parent_pid: int) -> None:
    """End the child (`os._exit(1)`) within PARENT_POLL_S of `parent_pid` no longer being its parent.

    A polling thread, not PR_SET_PDEATHSIG: that fires when the parent *thread* that started the child
    exits, and the training thread that starts a scoring child ends right after. The thread runs while the
    main one waits on the pipe or scores (torch and numpy release the GIL; Python code yields it every 5 ms).
    Storage's Lite server child does the same (storage.lite_process.exit_with_parent; not imported here,
    which would load pymilvus into this child).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        try:
            os.write(
                2,
                f"otad: parent process {parent_pid} is gone; scoring process {os.getpid()} exits\n".encode(),
            )
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="otad-exit-with-parent", daemon=True).start()
