"""Dead letters: rows (or anomaly events) that Milvus refused as data, kept on disk with the error.

A refused row must neither block the rows behind it nor vanish. The pipeline isolates it (see
``receiver/pipeline.py``) and appends it here, one JSON object per line, so an operator can read, fix and
re-send it. The file is capped; past the cap a record is not written (older dead letters are never
overwritten), and the caller counts and logs that.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["DeadLetterFile"]


class DeadLetterFile:
    """Append-only JSON lines in ``<directory>/rows.jsonl``.

    Args:
        directory: created if missing.
        max_bytes: the file stays under this; records past it are refused (``append`` returns False).
    """

    def __init__(self, directory: Path, *, max_bytes: int = 256 << 20) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "rows.jsonl"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def append(self, stage: str, error: str, item: dict[str, Any]) -> bool:
        """Write one refused item with its stage and error; fsynced before it returns (the spool then moves on).

        Returns:
            False when the cap is reached (nothing written).
        """
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stage": stage,
            "error": error,
            "item": item,
        }
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode(
            "utf-8", "surrogatepass"
        )
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(line) > self.max_bytes:
                return False
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return True

    def read(self) -> list[dict[str, Any]]:
        """Every record kept, oldest first (for tests and tooling)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
