"""The series member's explanations: one clause in plain words per alert (model/detectors/series.py)."""

from __future__ import annotations

import math
from typing import Any

from model.detectors.series_stats import SHAPE_POINTS, STATS


def fmt(v: float, unit: str) -> str:
    num = f"{v:,.0f}" if 100 <= abs(v) < 1e9 else f"{v:.3g}"
    return f"{num} {unit}" if unit and unit != "1" else num


def explain(detail: tuple[Any, ...], unit: str) -> str:
    """One clause in plain words: what changed, by how much, against which baseline."""
    test, x, pred, scale, z, ew_level, ew_var, period, window, shape = detail
    basis = f"seasonal value {fmt(pred, unit)} (same time in the last 3 periods of {period} points)"
    if not period:
        basis = f"level of {fmt(pred, unit)} (median of the last {window} points)"
    if STATS[test] == "shape":
        return (
            f"the last {SHAPE_POINTS} points (now {fmt(x, unit)}) form a shape unlike any earlier window of this"
            f" series: the nearest is {shape:.3g} robust SDs a point away"
        )
    if STATS[test] == "spike":
        side = "above" if z > 0 else "below"
        if abs(z) > 1e6:  # the series did not vary at all before this point
            return f"value {fmt(x, unit)} after a flat series at {fmt(pred, unit)}"
        return f"value {fmt(x, unit)} is {abs(z):.3g} robust SDs {side} this series' {basis}"
    if STATS[test] == "level":
        recent = pred + ew_level * scale
        ratio = f"{recent / pred:.2g}x, " if pred > 0 and recent > 0 else ""
        return f"level shift: recent points average {fmt(recent, unit)} ({ratio}{abs(ew_level):.1f} robust SDs) vs the {basis}"
    spread = math.sqrt(max(ew_var, 0.0))
    return (
        f"variance change: recent points vary {spread:.2g}x this series' usual spread of {fmt(scale, unit)}"
    )
