"""Drift between a model's training reference and a recent window of traffic, and the switch that acts on it.

Three figures, each computed on two contiguous windows featurized and embedded by the same model version:

- **feature drift**: per feature, a two-sample test (Kolmogorov-Smirnov for numeric columns, chi-square for
  categorical ones) with Benjamini-Hochberg control of the false-discovery rate over all features; a feature
  counts as drifted when its test is significant *and* its population stability index (PSI) is at least
  `psi_min` (with thousands of rows a test finds trivial shifts; PSI is the effect size). The figure is the
  share of features drifted.
- **embedding drift**: the squared maximum mean discrepancy (MMD) between the reference and recent
  embeddings (RBF kernel, median-distance bandwidth; about 0 without drift). Next to it, *coverage*: the mean
  cosine distance of recent rows to their nearest reference row over the same for held-out reference rows
  (about 1; larger when traffic leaves the reference's neighbourhood; the challenger's separation rule).
- **new-template rate**: the share of recent log messages no training template matches.

`Hysteresis` turns a figure into an on/off state: on after `checks` consecutive values above `high`, off
once a value falls below `low`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from model.encoder import Embedder
from model.schema import Row
from model.version import ModelVersion

EPS = 1e-4  # PSI: bins empty on one side count as this share, so the logarithm stays finite
MAX_EMBED_ROWS = 2000  # rows per window the embedding drift compares (an O(n^2) distance matrix)
UNSEEN_TEMPLATE = "<unseen>"  # model/extract.py: the template of a message no training template matches


@dataclass
class Window:
    """A window of rows as one model version sees them: features, embeddings, unmatched-template share."""

    num: np.ndarray  # (n, n_numeric) float
    cat: np.ndarray  # (n, n_categorical) int
    emb: np.ndarray  # (n, embed_dim) float
    new_template_rate: float = 0.0

    def __len__(self) -> int:
        return len(self.num)


def window(mv: ModelVersion, rows: list[Row]) -> Window:
    """Featurize (a fresh context state, in time order) and embed `rows` with model version `mv`."""
    rows = sorted(rows, key=lambda r: r.time_unix_nano)
    derived = mv.contract.derive_online(rows, mv.contract.new_tracker(), mv.contract.matcher())
    num, cat = mv.contract.encode(derived)
    emb = Embedder(mv.model).embed(num, cat) if len(rows) else np.zeros((0, mv.config.embed_dim), np.float32)
    templates = [d.get("template") for d in derived if d.get("template") is not None]
    unseen = sum(t == UNSEEN_TEMPLATE for t in templates) / len(templates) if templates else 0.0
    return Window(num, cat, emb, float(unseen))


@dataclass
class DriftReport:
    """The figures of one drift check."""

    features: int  # features tested
    drifted: list[str] = field(default_factory=list)  # names of the drifted features, largest PSI first
    feature_share: float = 0.0  # drifted / features
    max_psi: float = 0.0
    embedding: float = 0.0  # MMD^2 between reference and recent embeddings (0 = one distribution)
    coverage: float = 1.0  # nearest-reference distance ratio (1 = as close as held-out reference rows)
    new_template_rate: float = 0.0
    reference_rows: int = 0
    recent_rows: int = 0

    @property
    def score(self) -> float:
        """The figure the retrain switch watches: the larger of feature share and new-template rate."""
        return max(self.feature_share, self.new_template_rate)

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score}


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    """Population stability index of a numeric feature over the reference's quantile bins."""
    ref, cur = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    if not len(ref) or not len(cur):
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    return _psi(p, q)


def psi_categorical(ref: np.ndarray, cur: np.ndarray) -> float:
    """Population stability index of a categorical feature over the values either window holds."""
    values, inverse = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    p = np.bincount(inverse[: len(ref)], minlength=len(values)) / max(len(ref), 1)
    q = np.bincount(inverse[len(ref) :], minlength=len(values)) / max(len(cur), 1)
    return _psi(p, q)


def _psi(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.maximum(p, EPS), np.maximum(q, EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_pvalue(ref: np.ndarray, cur: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (1.0 when either side is constant and both are equal)."""
    if np.ptp(ref) == 0 and np.ptp(cur) == 0 and (not len(ref) or not len(cur) or ref[0] == cur[0]):
        return 1.0
    return float(stats.ks_2samp(ref, cur, method="asymp").pvalue)


def chi2_pvalue(ref: np.ndarray, cur: np.ndarray) -> float:
    """Chi-square test of homogeneity of two categorical samples (1.0 when they hold a single value)."""
    values, inverse = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    if len(values) < 2:
        return 1.0
    table = np.stack(
        [
            np.bincount(inverse[: len(ref)], minlength=len(values)),
            np.bincount(inverse[len(ref) :], minlength=len(values)),
        ]
    )
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def benjamini_hochberg(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Which hypotheses are rejected with the false-discovery rate controlled at `alpha` (step-up)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if not m:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    passed = p[order] <= alpha * np.arange(1, m + 1) / m
    reject = np.zeros(m, dtype=bool)
    if passed.any():
        k = int(np.flatnonzero(passed).max())
        reject[order[: k + 1]] = True
    return reject


def embedding_drift(ref: np.ndarray, cur: np.ndarray, seed: int = 0) -> float:
    """Mean cosine distance of `cur` rows to their nearest `ref` row over the same for held-out `ref` rows.

    Half the reference (at most MAX_EMBED_ROWS rows) is the index; the other half measures how far rows of the
    reference itself sit from it. About 1 when `cur` is like the reference, larger as it moves away.
    """
    rng = np.random.default_rng(seed)
    ref = _unit(np.asarray(ref, dtype=np.float32))
    cur = _unit(np.asarray(cur, dtype=np.float32))
    if len(ref) < 4 or not len(cur):
        return 1.0
    perm = rng.permutation(len(ref))
    half = len(ref) // 2
    index = ref[perm[:half][:MAX_EMBED_ROWS]]
    held = ref[perm[half:][:MAX_EMBED_ROWS]]
    if len(cur) > MAX_EMBED_ROWS:
        cur = cur[rng.choice(len(cur), MAX_EMBED_ROWS, replace=False)]
    base = _nearest(held, index)
    return float(_nearest(cur, index) / max(base, 1e-6))


def mmd(ref: np.ndarray, cur: np.ndarray, seed: int = 0, max_rows: int = 1000) -> float:
    """Squared maximum mean discrepancy between two embedding samples (RBF kernel, median-distance bandwidth,
    unbiased estimate over at most `max_rows` rows a side): about 0 for one distribution, larger as they part."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return 0.0
    x = x[rng.choice(len(x), min(len(x), max_rows), replace=False)]
    y = y[rng.choice(len(y), min(len(y), max_rows), replace=False)]
    z = np.concatenate([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    h = float(np.median(d2[np.triu_indices(len(z), 1)])) or 1.0
    k = np.exp(-d2 / h)
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(queries: np.ndarray, index: np.ndarray) -> float:
    """Mean cosine distance of unit `queries` to their nearest unit `index` row."""
    return float(np.mean(1.0 - (queries @ index.T).max(axis=1)))


def compare(
    ref: Window,
    cur: Window,
    numeric_names: list[str],
    categorical_names: list[str],
    *,
    alpha: float = 0.01,
    psi_min: float = 0.1,
) -> DriftReport:
    """Drift of `cur` against `ref` (both from the same model version: never compare across versions)."""
    pvalues: list[float] = []
    psis: list[float] = []
    names: list[str] = []
    for j, name in enumerate(numeric_names[: ref.num.shape[1]]):
        pvalues.append(ks_pvalue(ref.num[:, j], cur.num[:, j]))
        psis.append(psi(ref.num[:, j], cur.num[:, j]))
        names.append(name)
    for j, name in enumerate(categorical_names[: ref.cat.shape[1]]):
        pvalues.append(chi2_pvalue(ref.cat[:, j], cur.cat[:, j]))
        psis.append(psi_categorical(ref.cat[:, j], cur.cat[:, j]))
        names.append(name)
    psi_arr = np.asarray(psis)
    drifted = benjamini_hochberg(np.asarray(pvalues), alpha) & (psi_arr >= psi_min)
    order = [i for i in np.argsort(-psi_arr) if drifted[i]]
    return DriftReport(
        features=len(names),
        drifted=[names[i] for i in order],
        feature_share=float(drifted.mean()) if len(names) else 0.0,
        max_psi=float(psi_arr.max()) if len(psi_arr) else 0.0,
        embedding=mmd(ref.emb, cur.emb),
        coverage=embedding_drift(ref.emb, cur.emb),
        new_template_rate=cur.new_template_rate,
        reference_rows=len(ref),
        recent_rows=len(cur),
    )


class Hysteresis:
    """On after `checks` consecutive values above `high`; off again once a value falls below `low`."""

    def __init__(self, high: float, low: float, checks: int = 3):
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
        if checks < 1:
            raise ValueError(f"checks must be >= 1, got {checks}")
        self.high, self.low, self.checks = high, low, checks
        self.active = False
        self.streak = 0  # consecutive values above `high`

    def update(self, value: float) -> bool:
        """Feed one check's value; returns whether the state turned on with this value."""
        self.streak = self.streak + 1 if value > self.high else 0
        if self.active:
            if value < self.low:
                self.active = False
            return False
        if self.streak >= self.checks:
            self.active = True
            return True
        return False
