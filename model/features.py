"""Featurize: OCSF rows -> (numeric float32 matrix, categorical int64 matrix) under a versioned contract.

The contract is fitted on training rows and saved as JSON with the model: column lists, vocabularies
(index 0 = missing, 1 = out of vocabulary), numeric transforms (log1p for heavy tails, then robust
scaling), mined log templates and the primed entity-pair history. Label-like fields never become features.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.context import FEATURES as CONTEXT_FEATURES
from model.context import UNITS as CONTEXT_UNITS
from model.context import ContextTracker
from model.extract import Derived, derive, time_features
from model.schema import Row
from model.templates import TemplateMatcher, mine

CONTRACT_VERSION = 4


class ContractVersionError(ValueError):
    """A saved model's feature contract was written by another release: its features cannot be computed."""


MISSING, OOV = 0, 1
CLIP = 20.0

# Never features: labels and ground truth, whatever the source calls them.
LABEL_LIKE = re.compile(
    r"(^|[._])(anomal\w*|is_anomaly|labels?|ground_?truth|injected|attack\w*)($|[._])", re.I
)
# Identity columns: high-cardinality by nature; represented through templates, subnets and pair history.
IDENTITY = re.compile(
    r"(^|[._])(uid|id|ids|session|trace|span|request_id|order|email|ip|address|port)($|[._])", re.I
)

CATEGORICAL = (
    "signal",
    "service",
    "class_uid",
    "activity_id",
    "severity_id",
    "status_id",
    "status_code",
    "http_request.http_method",
    "url_template",
    "template",
    "trace.span.kind",
    "trace.span.operation",
    "api.operation",
    "api.service.name",
    "error.type",
    "db.system",
    "db.operation",
    "metric.name",
    "metric.type",
    "metric.unit",
    "dst_endpoint.svc_name",
    "src_endpoint.location.country",
    "ua_family",
    "scope.name",
    "has_user",
)
NUMERIC = (
    "duration",
    "http_response.length",
    "http_request.length",
    "http_response.code_class",
    "metric.value",
    "metric.rate",
    "metric.mean",
    "metric.p99",
    "metric.count",
    "trace.span.events",
    "trace.span.exception",
    "message_length",
    "message.duration_ms",
    "template_rarity",
    *CONTEXT_FEATURES,
)
TIME_FEATURES = ("time.hour_sin", "time.hour_cos", "time.dow_sin", "time.dow_cos")


@dataclass
class NumericSpec:
    name: str
    log: bool
    center: float
    scale: float
    missing_flag: bool


@dataclass
class FeatureContract:
    """Fitted columns and transforms. `transform` is the only way rows become model input."""

    categorical: list[str] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    numeric: list[NumericSpec] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    template_rarity: list[float] = field(default_factory=list)
    pair_counts: dict[str, int] = field(default_factory=dict)
    rarity: dict[str, list[float]] = field(default_factory=dict)  # per categorical: -log frequency by index
    time_features: bool = False
    version: int = CONTRACT_VERSION
    # The context state at the end of the training window (ContextTracker.state()): scoring continues from it,
    # so its first rows have the baselines their training neighbours had. Saved beside the model, not in JSON.
    context: tuple[dict[str, Any], dict[str, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )

    # ----- fitting -----
    @classmethod
    def fit(
        cls, rows: list[Row], *, min_count: int = 2, max_vocab: int = 256
    ) -> tuple[FeatureContract, list[Derived]]:
        """Fit on training rows (time-ordered). Returns the contract and the rows' derived values."""
        rows = sorted(rows, key=lambda r: r.time_unix_nano)
        messages = [str(r.fields.get("message", "")) for r in rows if r.signal == "logs"]
        templates = mine(messages)
        matcher = TemplateMatcher(templates)
        derived = [derive(r, matcher) for r in rows]
        counts = Counter(d.get("template") for d in derived if d.get("template") is not None)
        total = sum(counts.values()) or 1
        rarity = [-math.log((counts.get(str(i), 0) + 1) / (total + 1)) for i in range(len(templates))]
        for d in derived:
            t = d.get("template")
            d["template_rarity"] = (
                rarity[int(t)] if isinstance(t, str) and t.isdigit() else -math.log(1 / (total + 1))
            )
        span_h = (rows[-1].time_unix_nano - rows[0].time_unix_nano) / 3.6e12 if rows else 0
        contract = cls(templates=templates, template_rarity=rarity, time_features=span_h >= 20)
        tracker = ContextTracker()
        for d in derived:
            tracker.prime(d)
        for r, d in zip(rows, derived, strict=True):
            d.update(tracker.update(d, r.time_ms, learn_pairs=False, exclude_self=True))
            if contract.time_features:
                d.update(time_features(r.time_ms))
        contract.pair_counts = tracker.pair_counts
        contract.context = tracker.state()
        contract._fit_columns(derived, len(rows), min_count, max_vocab)
        return contract, derived

    def _fit_columns(self, derived: list[Derived], n: int, min_count: int, max_vocab: int) -> None:
        candidates: dict[str, list[object]] = {}
        for d in derived:
            for key, value in d.items():
                if value is None or key.startswith("_") or LABEL_LIKE.search(key):
                    continue
                candidates.setdefault(key, []).append(value)
        numeric_names = list(NUMERIC) + (list(TIME_FEATURES) if self.time_features else [])
        categorical_names = list(CATEGORICAL)
        for key, values in sorted(candidates.items()):
            if not key.startswith("unmapped.") or len(values) < max(10, n // 200):
                continue
            if IDENTITY.search(key[len("unmapped.") :]):
                continue
            if all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
                numeric_names.append(key)
            elif len(set(map(str, values))) <= 64:
                categorical_names.append(key)
        for name in categorical_names:
            seen = candidates.get(name)
            if not seen:
                continue
            common = [v for v, c in Counter(map(str, seen)).most_common(max_vocab) if c >= min_count]
            if not common:
                continue
            self.categorical.append(name)
            self.vocab[name] = common
            freq = Counter(map(str, seen))
            n_missing, n_oov = n - len(seen), sum(c for v, c in freq.items() if v not in set(common))
            counts = [n_missing, n_oov] + [freq[v] for v in common]
            self.rarity[name] = [round(-math.log((c + 1) / (n + 1)), 4) for c in counts]
            self.rarity[name][1] = round(-math.log(1 / (n + 1)), 4)  # out of vocabulary = never seen
        for name in numeric_names:
            values = [
                float(x)
                for x in candidates.get(name, ())
                if isinstance(x, int | float) and math.isfinite(float(x))
            ]
            if len(values) < max(5, n // 1000):
                continue
            if name in CONTEXT_UNITS:
                center, scale = CONTEXT_UNITS[name]
                self.numeric.append(NumericSpec(name, False, center, scale, len(values) < n))
                continue
            arr = np.asarray(values, dtype=np.float64)
            log = bool(
                arr.min() >= 0
                and np.quantile(arr, 0.99) > 10 * (np.quantile(arr, 0.5) + 1e-9)
                and arr.max() > 10
            )
            if log:
                arr = np.log1p(arr)
            q05, q25, q50, q75, q95 = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
            scale = (q75 - q25) / 1.349
            if (
                scale <= 1e-9
            ):  # mostly one value: the spread of the rest, so a routine other value is not extreme
                scale = max((q95 - q05) / 3.29, float(arr.std()))
            if scale <= 1e-9:
                scale = 1.0
            self.numeric.append(NumericSpec(name, log, float(q50), float(scale), len(values) < n))

    # ----- transforming -----
    @property
    def n_numeric(self) -> int:
        return len(self.numeric) + sum(s.missing_flag for s in self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 2 for c in self.categorical]

    def numeric_names(self) -> list[str]:
        return [s.name for s in self.numeric] + [f"{s.name}.missing" for s in self.numeric if s.missing_flag]

    def new_tracker(self) -> ContextTracker:
        """The context state scoring starts from: the training window's end, else only its pair history.

        A fresh tracker knows no baselines: every operation's first rows would lack the latency and failure
        features all their training neighbours have, and look novel after each model start."""
        if self.context is not None:
            return ContextTracker.from_state(*self.context)
        return ContextTracker(pair_counts=self.pair_counts)

    def matcher(self) -> TemplateMatcher:
        return TemplateMatcher(self.templates)

    def derive_online(
        self, rows: list[Row], tracker: ContextTracker, matcher: TemplateMatcher
    ) -> list[Derived]:
        """Derived values for rows arriving after training, updating the context state in time order."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].time_unix_nano)
        derived: list[Derived] = [{}] * len(rows)
        default_rarity = max(self.template_rarity, default=10.0) + 1.0
        for i in order:
            r = rows[i]
            d = derive(r, matcher)
            t = d.get("template")
            d["template_rarity"] = (
                self.template_rarity[int(t)] if isinstance(t, str) and t.isdigit() else default_rarity
            )
            d.update(tracker.update(d, r.time_ms))
            if self.time_features:
                d.update(time_features(r.time_ms))
            derived[i] = d
        return derived

    def encode(self, derived: list[Derived]) -> tuple[np.ndarray, np.ndarray]:
        """Derived values -> (numeric (n, n_numeric) float32, categorical (n, n_categorical) int64).

        Column by column (one pass of Python per column, the arithmetic in numpy): this is the hot path.
        """
        n = len(derived)
        num = np.zeros((n, self.n_numeric), dtype=np.float32)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, name in enumerate(self.categorical):
            index = {v: i + 2 for i, v in enumerate(self.vocab[name])}
            values = [d.get(name) for d in derived]
            cat[:, j] = [
                MISSING if v is None or v == "" else index.get(v if isinstance(v, str) else str(v), OOV)
                for v in values
            ]
        flag = len(self.numeric)
        for k, spec in enumerate(self.numeric):
            values = [d.get(spec.name) for d in derived]
            x = np.array(
                [v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan for v in values],
                dtype=np.float64,
            )
            with np.errstate(invalid="ignore", over="ignore"):
                missing = ~np.isfinite(x)
                if spec.log:
                    x = np.sign(x) * np.log1p(np.abs(x))
                col = np.clip((x - spec.center) / spec.scale, -CLIP, CLIP)
            col[missing] = 0.0
            num[:, k] = col
            if spec.missing_flag:
                num[:, flag] = missing
                flag += 1
        return num, cat

    def rarity_matrix(self, cat: np.ndarray) -> np.ndarray:
        """(n, n_categorical) -log training frequency of each categorical value (unseen = rarest)."""
        out = np.zeros(cat.shape, dtype=np.float32)
        for j, name in enumerate(self.categorical):
            table = np.asarray(self.rarity[name], dtype=np.float32)
            out[:, j] = table[cat[:, j]]
        return out

    def display(self, derived: Derived, name: str) -> str:
        """A human value for an explanation."""
        value = derived.get(name[: -len(".missing")] if name.endswith(".missing") else name)
        if value is None:
            return "missing"
        if name == "template" and str(value).isdigit() and int(str(value)) < len(self.templates):
            return repr(self.templates[int(str(value))][:60])
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)[:60]

    # ----- persistence (JSON only; nothing is unpickled) -----
    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "categorical": self.categorical,
            "vocab": self.vocab,
            "numeric": [s.__dict__ for s in self.numeric],
            "templates": self.templates,
            "template_rarity": self.template_rarity,
            "pair_counts": self.pair_counts,
            "rarity": self.rarity,
            "time_features": self.time_features,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureContract:
        if data.get("version") != CONTRACT_VERSION:
            raise ContractVersionError(
                f"feature contract version {data.get('version')} is not {CONTRACT_VERSION} "
                "(the model was trained by another otad release); retrain the model"
            )
        return cls(
            categorical=list(data["categorical"]),
            vocab={k: list(v) for k, v in data["vocab"].items()},
            numeric=[NumericSpec(**s) for s in data["numeric"]],
            templates=list(data["templates"]),
            template_rarity=list(data["template_rarity"]),
            pair_counts=dict(data["pair_counts"]),
            rarity={k: list(v) for k, v in data["rarity"].items()},
            time_features=bool(data["time_features"]),
            version=int(data["version"]),
        )
