"""Inline SVG charts for `otad report`: no script, no fonts or files fetched, so the page works offline and in a
mail attachment. Every function returns one `<svg>` element as a string; text is escaped here."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
NORMAL, ANOMALY = "#9bb7d4", "#d62728"
_PAD = (48, 12, 16, 34)  # left, right, top, bottom


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _scale(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _frame(
    width: int, height: int, x: tuple[float, float], y: tuple[float, float], fmt_x: Callable[[float], str]
) -> tuple[list[str], Callable[[float], float], Callable[[float], float]]:
    """Axes with ticks; returns the SVG parts and the x and y scales into the plot area."""
    left, right, top, bottom = _PAD
    sx = _scale(x[0], x[1], left, width - right)
    sy = _scale(y[0], y[1], height - bottom, top)
    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
    ]
    for t in _ticks(*y):
        parts.append(
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="10">{esc(f"{t:g}")}</text>'
            f'<line x1="{left}" y1="{sy(t):.1f}" x2="{width - right}" y2="{sy(t):.1f}" stroke="#eee"/>'
        )
    for t in _ticks(*x, n=4):
        parts.append(
            f'<text x="{sx(t):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">'
            f"{esc(fmt_x(t))}</text>"
        )
    return parts, sx, sy


def _svg(width: int, height: int, parts: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}" font-family="sans-serif">'
        + "".join(parts)
        + "</svg>"
    )


def _legend(names: Sequence[str], width: int) -> list[str]:
    parts, x = [], _PAD[0]
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="2" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="11" font-size="11">{esc(name)}</text>'
        )
        x += 24 + 7 * len(name)
        if x > width - 80:
            break
    return parts


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    label: str,
    fmt_x: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 860,
    height: int = 260,
    y_range: tuple[float, float] | None = None,
    points: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """Polylines, one per series (name -> (xs, ys)), with a legend; `points` adds labelled markers."""
    xs = [v for x, _ in series.values() for v in x] or [0.0, 1.0]
    ys = [v for _, y in series.values() for v in y] or [0.0, 1.0]
    y_lo, y_hi = y_range or (0.0, max(max(ys), 1e-9))
    parts, sx, sy = _frame(width, height, (min(xs), max(xs)), (y_lo, y_hi), fmt_x)
    for i, (name, (x, y)) in enumerate(series.items()):
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y, strict=True))
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}">'
            f"<title>{esc(name)}</title></polyline>"
        )
    for name, (a, b) in (points or {}).items():
        parts.append(
            f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="4" fill="{ANOMALY}"><title>{esc(name)}</title></circle>'
            f'<text x="{sx(a) + (-6 if a > 0.5 * (min(xs) + max(xs)) else 6):.1f}" y="{sy(b) + 14:.1f}" '
            f'text-anchor="{"end" if a > 0.5 * (min(xs) + max(xs)) else "start"}" font-size="10">{esc(name)}</text>'
        )
    return _svg(width, height, parts + _legend(list(series), width), label)


def histogram(
    values: np.ndarray,
    *,
    label: str,
    bins: int = 30,
    mark: float | None = None,
    width: int = 270,
    height: int = 150,
) -> str:
    """Counts of `values` in equal bins (log-scaled bars, so the tail is visible); `mark` draws a line."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    hi = float(max(values.max(initial=0.0), mark or 0.0, 1e-9))
    counts, edges = np.histogram(values, bins=bins, range=(0.0, hi))
    top = math.log10(max(int(counts.max(initial=0)), 1) + 1)
    parts, sx, sy = _frame(width, height, (0.0, hi), (0.0, top), lambda v: f"{v:g}")
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            h = math.log10(c + 1)
            parts.append(
                f'<rect x="{sx(a):.1f}" y="{sy(h):.1f}" width="{max(sx(b) - sx(a) - 1, 1):.1f}" '
                f'height="{sy(0) - sy(h):.1f}" fill="{PALETTE[0]}"><title>{int(c)} rows in [{a:.2f}, {b:.2f})'
                f"</title></rect>"
            )
    if mark is not None:
        parts.append(
            f'<line x1="{sx(mark):.1f}" y1="{_PAD[2]}" x2="{sx(mark):.1f}" y2="{sy(0):.1f}" '
            f'stroke="{ANOMALY}" stroke-dasharray="4 3"><title>threshold {mark:.2f}</title></line>'
        )
    parts.append(f'<text x="{_PAD[0]}" y="11" font-size="11" font-weight="bold">{esc(label)}</text>')
    return _svg(width, height, parts, label)


def scatter(
    xy: np.ndarray,
    flagged: np.ndarray,
    *,
    label: str,
    titles: Sequence[str] = (),
    width: int = 560,
    height: int = 420,
) -> str:
    """Points in 2-D: normal rows pale, flagged rows red and on top; `titles` are hover texts."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not len(xy):
        xy = np.zeros((1, 2))
        flagged = np.zeros(1, bool)
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    parts, sx, sy = _frame(
        width, height, (float(x0), float(x1)), (float(y0), float(y1)), lambda v: f"{v:.1f}"
    )
    order = np.argsort(flagged, kind="stable")  # anomalies drawn last, on top
    for i in order:
        color, r = (ANOMALY, 3.2) if flagged[i] else (NORMAL, 2.0)
        title = f"<title>{esc(titles[i])}</title>" if i < len(titles) and titles[i] else ""
        parts.append(
            f'<circle cx="{sx(xy[i, 0]):.1f}" cy="{sy(xy[i, 1]):.1f}" r="{r}" fill="{color}" '
            f'fill-opacity="0.75">{title}</circle>'
        )
    parts.append(
        f'<circle cx="{_PAD[0] + 6}" cy="8" r="4" fill="{NORMAL}"/><text x="{_PAD[0] + 14}" y="12" '
        f'font-size="11">normal</text><circle cx="{_PAD[0] + 76}" cy="8" r="4" fill="{ANOMALY}"/>'
        f'<text x="{_PAD[0] + 84}" y="12" font-size="11">anomaly</text>'
    )
    return _svg(width, height, parts, label)
