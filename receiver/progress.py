"""Progress for the long CLI steps (reading input files, training, scoring): a tqdm bar on a terminal, a plain
line every few seconds elsewhere (pipes, CI logs), so nothing is redrawn into a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Progress:
    """A tqdm bar on a terminal; elsewhere (a pipe, CI logs) a plain line at most every `every_s` seconds."""

    def __init__(
        self, total: float, desc: str, unit: str = "rows", every_s: float = 10.0, **bar: Any
    ) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs shipped

        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0.0
        self._started = self._said = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, **bar)

    def update(self, n: float, note: str = "") -> None:
        self.done += n
        if not self.bar.disable:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._said >= self.every_s or self.done >= self.total or note:
            self._said = now
            rate = f"({self.done / max(now - self._started, 1e-9):,.0f}/s)" if not note else note
            sys.stderr.write(f"  {self.desc} {self.done:,.0f}/{self.total:,.0f} {self.unit} {rate}\n")

    def close(self) -> None:
        self.bar.close()


def read_with_progress(paths: list[Path], read: Callable[..., list]) -> list:
    """`read(paths, progress=...)` with a bar over the input's bytes (missing files fail before reading)."""
    sizes = [Path(p).stat().st_size for p in paths]
    bar = Progress(sum(sizes), "reading", unit="B", unit_scale=True, unit_divisor=1024)
    try:
        return read(paths, progress=bar.update)
    finally:
        bar.close()


def epoch_progress(epochs: int) -> Callable[[dict], None]:
    """The `progress` callback of training: one bar step per epoch, with the losses."""
    state: dict[str, Progress] = {}

    def step(record: dict) -> None:
        bar = state.get("bar") or state.setdefault("bar", Progress(epochs, "training", unit="epochs"))
        bar.update(
            1,
            f"epoch {record['epoch']} train {record['train_loss']:.4f} val {record['val_loss']:.4f} "
            f"{record['seconds']:.1f}s",
        )
        if bar.done >= epochs:
            bar.close()

    return step
