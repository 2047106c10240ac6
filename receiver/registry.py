"""The saved model versions and what happened to them: `<models dir>/lifecycle.json` next to the version
directories and the CURRENT pointer (model/version.py).

A version directory (with its `model.json`) and its rows collection make a version *kept*: it can be made
current again (rollback). `lifecycle.json` records which versions were current before (retired), the
challenger verdicts, and the last events; losing it loses only that history, never a version.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from model.version import CURRENT

logger = logging.getLogger(__name__)

STATE_FILE = "lifecycle.json"
MAX_EVENTS = 50


class Registry:
    """Reads and records the versions under `models_dir` (thread-safe; one writer process)."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._lock = threading.RLock()
        self._meta: dict[str, dict[str, Any]] = {}  # model.json meta by version (files never change)

    # ----- the state file -----
    def read(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.models_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            doc = {}
        doc.setdefault("retired", {})
        doc.setdefault("verdicts", {})
        doc.setdefault("events", [])
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.models_dir / STATE_FILE)

    def event(self, kind: str, version: str | None, reason: str, **fields: Any) -> None:
        """Record one event (promoted, discarded, rolled back, retrain failed, pruned)."""
        with self._lock:
            doc = self.read()
            doc["events"] = [
                *doc["events"][-(MAX_EVENTS - 1) :],
                {"at": time.time(), "kind": kind, "version": version, "reason": reason, **fields},
            ]
            if kind in {"promoted", "rolled back"} and fields.get("previous"):
                doc["retired"][fields["previous"]] = {"at": time.time(), "reason": f"replaced: {reason}"}
            if version is not None and kind in {"promoted", "rolled back"}:
                doc["retired"].pop(version, None)
            self._write(doc)

    def verdict(self, version: str, verdict: dict[str, Any]) -> None:
        with self._lock:
            doc = self.read()
            doc["verdicts"][version] = verdict
            self._write(doc)

    def forget(self, version: str) -> None:
        with self._lock:
            doc = self.read()
            doc["retired"].pop(version, None)
            doc["verdicts"].pop(version, None)
            self._write(doc)
            self._meta.pop(version, None)

    # ----- the version directories -----
    def current(self) -> str | None:
        pointer = self.models_dir / CURRENT
        return pointer.read_text().strip() if pointer.exists() else None

    def meta(self, version: str) -> dict[str, Any]:
        """The training figures in the version's model.json (LookupError: no such saved version)."""
        if version not in self._meta:
            path = self.models_dir / version / "model.json"
            if not version or "/" in version or not path.is_file():
                raise LookupError(f"no saved model version {version!r} under {self.models_dir}")
            self._meta[version] = json.loads(path.read_text()).get("meta", {})
        return self._meta[version]

    def versions(self) -> list[str]:
        """Saved versions, oldest training first."""
        if not self.models_dir.is_dir():
            return []
        found = [p.name for p in self.models_dir.iterdir() if (p / "model.json").is_file()]
        return sorted(found, key=lambda v: (self.meta(v).get("trained_at", 0.0), v))

    def previous(self, exclude: set[str]) -> str | None:
        """The most recently retired version still saved (the default rollback target)."""
        saved = set(self.versions())
        retired = self.read()["retired"]
        ranked = sorted(
            (info.get("at", 0.0), v) for v, info in retired.items() if v in saved and v not in exclude
        )
        return ranked[-1][1] if ranked else None

    def remove(self, version: str) -> None:
        """Delete a version's directory and its history (its rows collection is the caller's)."""
        shutil.rmtree(self.models_dir / version, ignore_errors=True)
        self.forget(version)

    def describe(self, current: str | None, challenger: str | None) -> list[dict[str, Any]]:
        """Every saved version, oldest first: training window, rows, quality figures and state (current,
        challenger, retired: was current before, kept: saved but never current)."""
        doc = self.read()
        out = []
        for v in self.versions():
            meta = self.meta(v)
            history = meta.get("history") or [{}]
            state = (
                "current"
                if v == current
                else "challenger"
                if v == challenger
                else "retired"
                if v in doc["retired"]
                else "kept"
            )
            quality = {
                "best_epoch": meta.get("best_epoch"),
                "last_epoch": {k: x for k, x in history[-1].items() if isinstance(x, int | float)},
                "reference_rows": meta.get("reference_rows"),
                "detectors": meta.get("detectors"),
            }
            if v in doc["verdicts"]:
                quality["shadow"] = doc["verdicts"][v]
            out.append(
                {
                    "version": v,
                    "created": meta.get("trained_at"),
                    "train_start_unix_nano": meta.get("train_start_unix_nano"),
                    "train_end_unix_nano": meta.get("train_end_unix_nano"),
                    "rows": meta.get("rows"),
                    "quality": quality,
                    "state": state,
                }
            )
        return out
