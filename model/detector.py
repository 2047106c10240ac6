"""Score: duplicate-aware k-NN distance to normal history, calibrated into 0-100 with a threshold.

Higher is always more anomalous. The reference set holds unique vectors with counts, so a row is never its own
neighbour and a cluster of identical rows weighs with its multiplicity. A calibration maps a raw distance to a
tail probability (empirical up to a high quantile, exponential beyond) and p to score = 100 * -log10(p) / 6.
It is fitted over time blocks, because training history holds incidents, and per signal, because the
distances of log records, spans and metric points live on different scales (docs/detection.md §3 and §6).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from model.calibration import TAIL_Q, Calibration, pvalue_to_score

logger = logging.getLogger(__name__)

CLEAN_BLOCKS = 4  # time blocks for cross-block reference cleaning
CLEAN_MIN_ROWS = 2_000  # below this, blocks are too small to stand for "the rest of history"
RARE_SHARE = 0.01  # rows least like the other time blocks, always dropped
GROUP_MIN_ROWS = 1_000  # a group with fewer calibration rows is scored with the calibration of all rows
# Rows an approximate (HNSW) search calls at least this rare are searched again exactly (see decision_function).
RECHECK_P = 0.01
BURST_RATIO = 0.5  # a row is bursty when its neighbours in its own block are this much closer than elsewhere


class KnnDetector:
    """fit(embeddings) on normal history; decision_function -> raw distance; score -> 0-100.

    Args:
        k: neighbours averaged (with multiplicity).
        alert_pvalue: tail probability at the threshold (1e-3 -> threshold score 50).
        hnsw_above: reference sizes above this use an HNSW index instead of exact search.
    """

    name = "knn-embedding"

    def __init__(
        self,
        k: int = 10,
        alert_pvalue: float = 1e-3,
        hnsw_above: int = 4_096,
        max_rows: int = 100_000,
        contamination: float = 0.05,
    ):
        if not 0 < alert_pvalue < 0.5:
            raise ValueError(f"alert_pvalue must be in (0, 0.5), got {alert_pvalue}")
        if not 0 <= contamination < 0.5:
            raise ValueError(f"contamination must be in [0, 0.5), got {contamination}")
        self.contamination = contamination
        self.k = k
        self.alert_pvalue = alert_pvalue
        self.hnsw_above = hnsw_above
        self.max_rows = max_rows

    # ----- fitting -----
    def fit(
        self,
        embeddings: np.ndarray,
        uids: list[str],
        clean: bool = True,
        times: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        deviant: np.ndarray | None = None,
    ) -> KnnDetector:
        """Fit on reference embeddings (n, d) float32, in time order when `times` is given.

        Training data is not guaranteed clean: it may hold an incident. With `clean` and `times` (and at least
        CLEAN_MIN_ROWS rows), reference rows are cleaned once by time blocks (`_clean_by_blocks`) and the
        cross-block scores calibrate the detector; with `clean` but no times, rows whose leave-one-out score is
        beyond the threshold are dropped. Rows marked `deviant` (far from their own entity's baseline) never
        become reference rows. With `groups` (one label per row, e.g. the signal), each group with at least
        GROUP_MIN_ROWS calibration rows gets its own calibration. `rep_rows_` maps each unique reference vector
        to its first row in `embeddings`.
        """
        orig = np.arange(len(embeddings))
        grp = np.asarray(groups if groups is not None else [""] * len(embeddings), dtype=np.str_)
        calibration_rows = None
        if clean and times is not None and len(embeddings) >= CLEAN_MIN_ROWS:
            keep, calibration_rows = self._clean_by_blocks(embeddings, uids, np.asarray(times), grp, deviant)
            embeddings, orig, grp = embeddings[keep], orig[keep], grp[keep]
            uids = [u for u, k in zip(uids, keep, strict=True) if k]
            clean = False
        self._build(embeddings, uids, orig)
        loo = self.decision_function(embeddings, exclude_self=True)[0]
        if calibration_rows is None:
            self._calibrate(loo, grp)
        else:
            self._calibrate(*calibration_rows)
        if clean and len(embeddings) > 100:
            keep = self.pvalue(loo, grp) >= self.alert_pvalue
            dropped = int((~keep).sum())
            if dropped:
                logger.info(
                    "reference cleaning dropped %d of %d rows beyond the threshold", dropped, len(keep)
                )
                embeddings, orig, grp = embeddings[keep], orig[keep], grp[keep]
                uids = [u for u, k in zip(uids, keep, strict=True) if k]
                self._build(embeddings, uids, orig)
                loo = self.decision_function(embeddings, exclude_self=True)[0]
                self._calibrate(loo, grp)
        self.reference_scores_ = loo
        self.kept_rows_ = orig  # the training rows (indices into the embeddings fitted) that loo scores
        self.threshold_raw_ = self.calibration_.raw_at(self.alert_pvalue)
        self.threshold_ = float(pvalue_to_score(self.alert_pvalue))
        return self

    def _clean_by_blocks(
        self,
        embeddings: np.ndarray,
        uids: list[str],
        times: np.ndarray,
        groups: np.ndarray,
        deviant: np.ndarray | None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Which rows stay in the reference, and the (scores, groups, times) to calibrate on.

        Each row is scored against the *other* time blocks: an incident's rows find each other inside their
        own block, not across blocks. Dropped: the RARE_SHARE of rows least like the other blocks, and, up to
        `contamination`, bursty rows (far from the other blocks yet close to rows of their own: an incident),
        and `deviant` rows. Calibration keeps every row but the bursty ones (rare rows are the normal tail),
        so a new row, too, is scored against history that does not hold its own minutes.
        """
        cross = self._cross_block_scores(embeddings, times)
        self._build(embeddings, uids, np.arange(len(embeddings)))
        loo = self.decision_function(embeddings, exclude_self=True)[0]
        rare = cross > float(np.quantile(cross, 1.0 - RARE_SHARE))
        bursty = (cross > float(np.quantile(cross, 1.0 - self.contamination))) & (loo < BURST_RATIO * cross)
        keep = ~(rare | bursty)
        if deviant is not None:  # never reference rows, but their distances stay in the calibration
            keep &= ~deviant
        logger.info(
            "reference cleaning (%d time blocks): dropped %d of %d bursty rows unlike the rest of history",
            CLEAN_BLOCKS,
            int((~keep).sum()),
            len(keep),
        )
        return keep, (cross[~bursty], groups[~bursty], times[~bursty])

    def _calibrate(self, scores: np.ndarray, groups: np.ndarray, times: np.ndarray | None = None) -> None:
        self.calibration_ = Calibration.fit(scores, times)
        self.group_calibrations_: dict[str, Calibration] = {}
        for name in np.unique(groups):
            mine = groups == name
            if name and mine.sum() >= GROUP_MIN_ROWS:
                self.group_calibrations_[str(name)] = Calibration.fit(
                    scores[mine], None if times is None else times[mine]
                )

    def _cross_block_scores(self, embeddings: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Raw score of every row against a reference made of the other time blocks only.

        Two partitions, the second shifted by half a block, and the larger score of the two: an incident
        shorter than half a block lies wholly inside one block of at least one partition.
        """
        order = np.argsort(times, kind="stable")
        size = -(-len(order) // CLEAN_BLOCKS)
        out = np.zeros(len(embeddings), dtype=np.float64)
        for shift in (0, size // 2):
            rolled = np.roll(order, -shift)
            blocks = [rolled[i : i + size] for i in range(0, len(rolled), size)]
            for b, rows in enumerate(blocks):
                others = np.concatenate([blk for j, blk in enumerate(blocks) if j != b])
                probe = KnnDetector(k=self.k, alert_pvalue=self.alert_pvalue, hnsw_above=self.hnsw_above)
                probe._build(embeddings[others], [""] * len(others), others)
                out[rows] = np.maximum(out[rows], probe.decision_function(embeddings[rows])[0])
        return out

    def _build(self, embeddings: np.ndarray, uids: list[str], orig: np.ndarray) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        keys = np.round(embeddings, 4)
        _, first, inverse, counts = np.unique(
            keys, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        self._set(embeddings[first], counts.astype(np.int64), [uids[i] for i in first])
        self.row_to_unique_ = inverse.reshape(-1)
        self.rep_rows_ = orig[first]

    def _set(self, vectors: np.ndarray, counts: np.ndarray, uids: list[str]) -> None:
        self.dim_ = vectors.shape[1]
        self.vectors_ = np.ascontiguousarray(vectors, dtype=np.float32)
        self.counts_ = counts
        self.uids_ = uids
        self._keys = {key.tobytes(): j for j, key in enumerate(np.round(self.vectors_, 4))}
        index: faiss.Index
        if len(self.vectors_) > self.hnsw_above:
            hnsw = faiss.IndexHNSWFlat(self.dim_, 32, faiss.METRIC_L2)
            hnsw.hnsw.efConstruction = 80
            hnsw.hnsw.efSearch = 64
            index = hnsw
        else:
            index = faiss.IndexFlatL2(self.dim_)
        index.add(self.vectors_)
        self.index_ = index

    def add(self, embeddings: np.ndarray, uids: list[str]) -> list[int]:
        """Grow the normal history with rows scored below the threshold.

        Returns:
            positions (in `embeddings`) of the rows that became new reference vectors; duplicates only
            raise the count of the vector they repeat.
        """
        room = self.max_rows - len(self.vectors_)
        if room <= 0:
            return []
        new_vecs: list[np.ndarray] = []
        new_uids: list[str] = []
        new_rows: list[int] = []
        new_counts: list[int] = []
        added = 0
        base = len(self.vectors_)
        keys = np.round(embeddings, 4)
        for pos, (vec, key, uid) in enumerate(zip(embeddings, keys, uids, strict=True)):
            kb = key.tobytes()
            j = self._keys.get(kb)
            if j is not None:
                if j < base:
                    self.counts_[j] += 1
                else:
                    new_counts[j - base] += 1
                continue
            if added >= room:
                break
            self._keys[kb] = len(self.vectors_) + added
            new_vecs.append(vec)
            new_uids.append(uid)
            new_rows.append(pos)
            new_counts.append(1)
            added += 1
        if added:
            block = np.ascontiguousarray(np.stack(new_vecs), dtype=np.float32)
            self.index_.add(block)
            self.vectors_ = np.concatenate([self.vectors_, block])
            self.counts_ = np.concatenate([self.counts_, np.asarray(new_counts, dtype=np.int64)])
            self.uids_.extend(new_uids)
        return new_rows

    # ----- scoring -----
    def decision_function(
        self, embeddings: np.ndarray, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean Euclidean distance to the k nearest reference rows (with multiplicity).

        Returns:
            raw (n,) float64, and neighbours (n, k') int64 indices of unique reference vectors (-1 = none).
        """
        q = np.ascontiguousarray(embeddings, dtype=np.float32)
        k_search = min(len(self.vectors_), self.k + 1)
        d2, idx = self.index_.search(q, k_search)
        own = self.row_to_unique_ if exclude_self and len(q) == len(self.row_to_unique_) else None
        raw = self._mean_distance(d2, idx, own)
        if isinstance(self.index_, faiss.IndexHNSWFlat) and len(q):
            # An approximate search only ever finds neighbours farther than the true ones, and on clustered
            # data it can miss a row's whole cluster (a distance of 1.3 where the nearest is 0.05): the rows
            # it calls far are searched again exactly, so no row is unusual because of the index.
            redo = np.flatnonzero(raw >= self._recheck_level(raw))
            if len(redo):
                d2[redo], idx[redo] = faiss.knn(q[redo], self.vectors_, k_search)
                raw[redo] = self._mean_distance(d2[redo], idx[redo], None if own is None else own[redo])
        return raw, idx

    def _recheck_level(self, raw: np.ndarray) -> float:
        """The approximate distance from which a row is searched again exactly: the smallest distance any of
        the calibrations calls p <= RECHECK_P or, before calibration (while fitting), the query's top
        RECHECK_P share."""
        groups = getattr(self, "group_calibrations_", {}).values()
        cals = [c for c in (getattr(self, "calibration_", None), *groups) if c is not None]
        if cals:
            return min(c.raw_at(RECHECK_P) for c in cals)
        return float(np.quantile(raw, 1.0 - RECHECK_P))

    def _mean_distance(self, d2: np.ndarray, idx: np.ndarray, own: np.ndarray | None) -> np.ndarray:
        """Mean distance to the k nearest with multiplicity; `own`: each query's own vector, left out once."""
        k_search = d2.shape[1]
        dist = np.sqrt(np.maximum(d2, 0.0)).astype(np.float64)
        counts = np.where(idx >= 0, self.counts_[np.maximum(idx, 0)], 0).astype(np.float64)
        if own is not None:
            # The query's own vector is its first hit (distance ~0): remove one occurrence of it.
            counts = counts - (idx == own[:, None])
        remaining = np.full(len(d2), float(self.k))
        total = np.zeros(len(d2))
        for j in range(k_search):
            take = np.minimum(counts[:, j], remaining)
            total += take * dist[:, j]
            remaining -= take
        # Too few reference rows to reach k: charge the missing ones at the farthest distance seen.
        total += remaining * dist[:, -1]
        return total / self.k

    def pvalue(self, raw: np.ndarray, groups: list[str] | np.ndarray | None = None) -> np.ndarray:
        """Tail probabilities; each row by its group's calibration when `groups` is given and it has one."""
        raw = np.asarray(raw, dtype=np.float64)
        if groups is None or not self.group_calibrations_:
            return self.calibration_.pvalue(raw)
        groups = np.asarray(groups, dtype=np.str_)
        out = np.empty(len(raw), dtype=np.float64)
        own = np.zeros(len(raw), dtype=bool)
        for name, cal in self.group_calibrations_.items():
            mine = groups == name
            if mine.any():
                out[mine] = cal.pvalue(raw[mine])
                own |= mine
        if not own.all():
            out[~own] = self.calibration_.pvalue(raw[~own])
        return out

    def score(self, raw: np.ndarray, groups: list[str] | np.ndarray | None = None) -> np.ndarray:
        """0-100 scores (see `pvalue`)."""
        return pvalue_to_score(self.pvalue(raw, groups))

    def neighbor_uids(self, idx_row: np.ndarray, limit: int = 5) -> list[str]:
        return [self.uids_[i] for i in idx_row[:limit] if i >= 0]

    # ----- persistence -----
    def state(self) -> dict[str, np.ndarray]:
        return {
            "vectors": self.vectors_,
            "counts": self.counts_,
            "uids": np.asarray(self.uids_, dtype=np.str_),
            "calibration": self.calibration_.sorted_scores,
            "tail": np.asarray(
                [
                    self.calibration_.tail_u,
                    self.calibration_.tail_beta,
                    self.calibration_.tail_q,
                    self.calibration_.tail_xi,
                ]
            ),
            "groups": np.asarray(list(self.group_calibrations_), dtype=np.str_),
            **{f"calibration_{i}": c.sorted_scores for i, c in enumerate(self.group_calibrations_.values())},
            **{
                f"tail_{i}": np.asarray([c.tail_u, c.tail_beta, c.tail_q, c.tail_xi])
                for i, c in enumerate(self.group_calibrations_.values())
            },
        }

    @classmethod
    def from_state(
        cls, state: dict[str, np.ndarray], *, k: int = 10, alert_pvalue: float = 1e-3, max_rows: int = 100_000
    ) -> KnnDetector:
        """The detector saved by `state()` (its reference vectors and calibrations, as fitted)."""
        det = cls(k=k, alert_pvalue=alert_pvalue, max_rows=max_rows)
        vectors, counts = state["vectors"].astype(np.float32), state["counts"].astype(np.int64)
        uids = [str(u) for u in state["uids"]]
        det._set(vectors, counts, uids)
        det.row_to_unique_ = np.arange(len(vectors))
        tail = state["tail"]
        det.calibration_ = _calibration(state["calibration"], tail)
        det.group_calibrations_ = {
            str(name): _calibration(state[f"calibration_{i}"], state[f"tail_{i}"])
            for i, name in enumerate(state.get("groups", ()))
        }
        det.reference_scores_ = det.calibration_.sorted_scores
        det.threshold_raw_ = det.calibration_.raw_at(det.alert_pvalue)
        det.threshold_ = float(pvalue_to_score(det.alert_pvalue))
        return det


def _calibration(sorted_scores: np.ndarray, tail: np.ndarray) -> Calibration:
    return Calibration(
        sorted_scores.astype(np.float64),
        float(tail[0]),
        float(tail[1]),
        float(tail[2]) if len(tail) > 2 else TAIL_Q,
        float(tail[3]) if len(tail) > 3 else 0.0,
    )
