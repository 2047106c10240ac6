"""ContextTracker's online state as JSON-safe values plus numpy arrays (no pickle), and back.

LRU tables are stored oldest first, so a restored table evicts the same keys next. Table keys (strings, ints,
None, tuples of them, ...) become JSON values, with a type tag where JSON cannot tell types apart: a tuple is
{"t": [...]}, a non-finite float {"f": "nan"}. Per-key numbers go into arrays, one entry per key in table order.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from model.statefile import StateFileError


class Baseline(Protocol):
    """The per-key fields of a baseline (context._Series)."""

    mean: float
    var: float
    last: float
    n: int
    integral: bool
    t_ms: int | None


_S = TypeVar("_S", bound=Baseline)

# The float fields of a baseline, stored one float64 array each.
_FLOAT_FIELDS = ("mean", "var", "last")


def encode_key(key: object) -> Any:
    """A table key as a JSON value that decode_key turns back into an equal key of the same type."""
    if key is None or isinstance(key, str | bool | int):
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else {"f": repr(key)}
    if isinstance(key, tuple):
        return {"t": [encode_key(k) for k in key]}
    raise TypeError(f"a context key of type {type(key).__name__} cannot be stored: {key!r}")


def decode_key(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"t"} and isinstance(value["t"], list):
            return tuple(decode_key(v) for v in value["t"])
        if set(value) == {"f"} and value["f"] in ("nan", "inf", "-inf"):
            return float(value["f"])
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise StateFileError(f"context state: malformed key {value!r}")


def windows_state(events: Mapping[Any, list[int]]) -> tuple[list[Any], dict[str, np.ndarray]]:
    """A windowed counter's timestamps: keys, one length per key, and all timestamps concatenated."""
    lengths = np.fromiter((len(q) for q in events.values()), dtype=np.int64, count=len(events))
    times = np.fromiter(
        itertools.chain.from_iterable(events.values()), dtype=np.int64, count=int(lengths.sum())
    )
    return [encode_key(k) for k in events], {"lengths": lengths, "times": times}


def windows_from_state(keys: list[Any], arrays: Mapping[str, np.ndarray]) -> OrderedDict[Any, list[int]]:
    lengths, times = _get(arrays, "lengths", "i").tolist(), _get(arrays, "times", "i").tolist()
    if len(lengths) != len(keys) or sum(lengths) != len(times) or min(lengths, default=0) < 0:
        raise StateFileError("context state: window keys, lengths and timestamps disagree")
    out: OrderedDict[Any, list[int]] = OrderedDict()
    pos = 0
    for key, n in zip(keys, lengths, strict=True):
        out[decode_key(key)] = sorted(times[pos : pos + n])  # a state saved before: in arrival order
        pos += n
    _check_unique(out, keys)
    return out


def series_state(table: Mapping[Any, Baseline]) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Baselines (objects with mean, var, last, n, integral, t_ms) as one array per field."""
    items = list(table.values())
    arrays = {f: np.array([getattr(s, f) for s in items], dtype=np.float64) for f in _FLOAT_FIELDS}
    arrays["n"] = np.array([s.n for s in items], dtype=np.int64)
    arrays["integral"] = np.array([s.integral for s in items], dtype=np.bool_)
    arrays["has_t"] = np.array([s.t_ms is not None for s in items], dtype=np.bool_)
    arrays["t_ms"] = np.array([s.t_ms or 0 for s in items], dtype=np.int64)
    return [encode_key(k) for k in table], arrays


def series_from_state(
    keys: list[Any], arrays: Mapping[str, np.ndarray], factory: Callable[[], _S]
) -> OrderedDict[Any, _S]:
    kinds = {**dict.fromkeys(_FLOAT_FIELDS, "f"), "n": "i", "integral": "b", "has_t": "b", "t_ms": "i"}
    columns = {f: _get(arrays, f, kind).tolist() for f, kind in kinds.items()}
    if any(len(c) != len(keys) for c in columns.values()):
        raise StateFileError("context state: baseline keys and fields disagree in length")
    out: OrderedDict[Any, _S] = OrderedDict()
    for i, key in enumerate(keys):
        s = factory()
        s.mean, s.var, s.last = columns["mean"][i], columns["var"][i], columns["last"][i]
        s.n, s.integral = columns["n"][i], columns["integral"][i]
        s.t_ms = columns["t_ms"][i] if columns["has_t"][i] else None
        out[decode_key(key)] = s
    _check_unique(out, keys)
    return out


def counts_state(counts: Mapping[str, int]) -> tuple[list[str], np.ndarray]:
    return list(counts), np.fromiter(counts.values(), dtype=np.int64, count=len(counts))


def counts_from_state(keys: list[Any], arrays: Mapping[str, np.ndarray], name: str) -> dict[str, int]:
    values = _get(arrays, name, "i").tolist()
    if len(values) != len(keys) or not all(isinstance(k, str) for k in keys):
        raise StateFileError("context state: pair keys and counts disagree")
    out = dict(zip(keys, values, strict=True))
    _check_unique(out, keys)
    return out


def pack(prefix: str, arrays: Mapping[str, np.ndarray], into: dict[str, np.ndarray]) -> None:
    """Add arrays to `into` under `prefix.name` (one flat namespace per component)."""
    for name, array in arrays.items():
        into[f"{prefix}.{name}"] = array


def unpack(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    start = prefix + "."
    return {k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)}


def _get(arrays: Mapping[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    """The named array, checked to be one-dimensional and of the expected dtype kind (f, i or b)."""
    try:
        array = arrays[name]
    except KeyError:
        raise StateFileError(f"context state: array {name!r} is missing") from None
    if array.ndim != 1 or array.dtype.kind != kind:
        raise StateFileError(f"context state: array {name!r} has shape {array.shape} and dtype {array.dtype}")
    return array


def _check_unique(table: Mapping[Any, Any], keys: list[Any]) -> None:
    if len(table) != len(keys):
        raise StateFileError("context state: duplicate keys")
