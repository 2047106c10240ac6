"""Store stage, ``otad_rows_<version>``: embedded rows, one collection per model version, and k-NN search.

``RowsMixin`` holds these operations; ``MilvusStore`` (store.py) combines it with the others. A collection
per model version keeps embeddings of different models from ever being compared.
``upsert_row_columns`` is the pipeline's hot path, so it takes columns rather than row dicts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from storage import collection as col
from storage.core import MAX_QUERY_WINDOW, StoreCore
from storage.errors import StorageError

__all__ = ["SEARCH_BATCH", "RowsMixin"]

SEARCH_BATCH = 1024  # query vectors per search call


class RowsMixin(StoreCore):
    """Operations on the rows collections of each model version."""

    def ensure_rows_collection(self, model_version: str, dim: int) -> str:
        """Create (or check) the rows collection of ``model_version`` with ``dim``-wide embeddings.

        Returns:
            The collection name, ``otad_rows_<sanitised version>``.

        Raises:
            StorageError: it exists with another dim, or Milvus failed.
        """
        name = col.rows_collection_name(model_version)
        if self._dims.get(name) == dim:
            return name
        if dim < 1:
            raise StorageError(f"embedding dim must be >= 1, got {dim}")
        self._create_if_missing(name, col.rows_schema(dim), col.BOUNDED, placeholder=False)
        existing = self._open_rows(name)
        if existing != dim:
            self._dims.pop(name, None)
            self._schemas.pop(name, None)
            raise StorageError(
                f"{name} holds {existing}-d embeddings for model {model_version!r}, not {dim}-d"
            )
        return name

    def _rows_name(self, model_version: str) -> str:
        """The existing rows collection of ``model_version``, loaded (a new process finds it released)."""
        name = col.rows_collection_name(model_version)
        if name not in self._dims:
            exists = self._call(f"look up {name}", lambda c: c.has_collection(name, timeout=self._timeout))
            if not exists:
                raise StorageError(
                    f"no rows collection for model version {model_version!r}; call ensure_rows_collection first"
                )
            self._create_if_missing(name, None, col.BOUNDED, placeholder=False)  # exists: only loads it
            self._open_rows(name)
        return name

    def _open_rows(self, name: str) -> int:
        """Read the embedding dim of rows collection ``name`` and remember it."""
        self._schemas.pop(name, None)
        desc = self._call(f"describe {name}", lambda c: c.describe_collection(name, timeout=self._timeout))
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "embedding")
        self._dims[name] = dim
        return dim

    def upsert_rows(self, model_version: str, rows: list[dict[str, Any]]) -> int:
        """Upsert embedded rows of ``model_version`` keyed by uid; ``embedding`` may be a list or ndarray row."""
        if not rows:
            return 0
        for row in rows:
            if row.get("model_version", model_version) != model_version:
                raise StorageError(
                    f"row {row.get('uid')!r} is of model {row['model_version']!r}, not {model_version!r}"
                )
        columns = {f: [row[f] for row in rows] for f in col.ROW_FIELDS if f != "model_version"}
        embeddings = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        return self.upsert_row_columns(model_version, columns, embeddings)

    def upsert_row_columns(
        self, model_version: str, columns: Mapping[str, list[Any]], embeddings: np.ndarray
    ) -> int:
        """The column form of ``upsert_rows`` (the pipeline's hot path): one list per field, in row order.

        Args:
            columns: ``uid``, ``signal``, ``service``, ``class_uid``, ``time_ms``, ``trace_id``, ``score``,
                ``is_anomaly``, ``is_reference`` and ``row`` (dicts, or JSON strings already encoded);
                ``model_version`` is filled in.
            embeddings: (n, dim) float array, one row per uid.
        """
        n = len(columns["uid"])
        if not n:
            return 0
        name = self._rows_name(model_version)
        vectors = np.asarray(embeddings, dtype=np.float32).reshape(n, -1)  # a wrong dim: Milvus refuses it
        data = dict(columns)
        data["model_version"] = [model_version] * n
        data["row"] = [r if isinstance(r, str) else col.encode_row(r) for r in columns["row"]]
        data["score"] = [float(x) for x in columns["score"]]
        data["is_anomaly"] = [bool(x) for x in columns["is_anomaly"]]
        data["is_reference"] = [bool(x) for x in columns["is_reference"]]
        data["embedding"] = vectors.tolist()
        return self._upsert_columns(name, data, n)

    def search(
        self,
        model_version: str,
        vectors: np.ndarray,
        k: int,
        *,
        filter: str = "",
        filter_params: dict[str, Any] | None = None,
        output_fields: list[str] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """k nearest rows of ``model_version`` for each query vector, nearest first.

        Args:
            vectors: float array of shape (n_queries, dim) (or (dim,) for one query).
            k: neighbours per query (Milvus allows up to 16384).
            filter: a filter template such as ``"is_reference == {ref}"``; values go in ``filter_params``.
            output_fields: row fields to return with each hit (default none).

        Returns:
            One list per query of hits ``{"uid", "distance", **output_fields}``. ``distance`` is the cosine
            distance ``1 - cosine similarity`` (0 = same direction, lower = closer). Milvus itself returns
            the similarity for COSINE (higher = closer); the store converts it.
        """
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        if len(queries) == 0:
            return []
        name = self._rows_name(model_version)
        fields = list(output_fields or [])
        flt = self._filter(filter, filter_params)
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(queries), SEARCH_BATCH):
            results.extend(self._search_batch(name, queries[start : start + SEARCH_BATCH], k, fields, flt))
        return results

    def _search_batch(
        self, name: str, queries: np.ndarray, k: int, fields: list[str], flt: dict[str, Any]
    ) -> list[list[dict[str, Any]]]:
        data = queries.tolist()
        res = self._call(
            f"search {name}",
            lambda c: c.search(
                name,
                data=data,
                limit=k,
                output_fields=fields or ["uid"],
                anns_field="embedding",
                search_params={"metric_type": "COSINE"},
                timeout=self._timeout,
                **flt,
            ),
        )
        return [[col.decode_row(_hit(h, fields)) for h in hits] for hits in res]

    def query_rows(
        self,
        model_version: str,
        filter: str,
        filter_params: dict[str, Any] | None = None,
        output_fields: list[str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Rows of ``model_version`` matching the filter template (all non-vector fields by default)."""
        name = self._rows_name(model_version)
        fields = list(output_fields or col.ROW_FIELDS)
        res = self._call(
            f"query {name}",
            lambda c: c.query(
                name,
                output_fields=fields,
                limit=min(limit, MAX_QUERY_WINDOW),
                timeout=self._timeout,
                **self._filter(filter, filter_params),
            ),
        )
        return [col.decode_row(dict(row)) for row in res]

    def count_rows(self, model_version: str) -> int:
        """Rows stored for ``model_version`` (read with Strong consistency)."""
        return self._count(self._rows_name(model_version))

    def existing_row_uids(self, model_version: str, uids: list[str]) -> set[str]:
        """Which of these row uids are already stored in the rows collection of ``model_version``."""
        return self._existing(self._rows_name(model_version), uids)

    def iter_rows(
        self,
        model_version: str,
        filter: str = "",
        filter_params: dict[str, Any] | None = None,
        output_fields: list[str] | None = None,
        batch: int = 4096,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of rows of ``model_version`` matching the filter template, in no set order."""
        name = self._rows_name(model_version)
        fields = list(output_fields or col.ROW_FIELDS)
        for page in self._iterate(name, filter, filter_params, fields, batch):
            yield [col.decode_row(r) for r in page]

    def has_rows_collection(self, model_version: str) -> bool:
        """Whether the rows collection of ``model_version`` exists."""
        name = col.rows_collection_name(model_version)
        return bool(self._call(f"look up {name}", lambda c: c.has_collection(name, timeout=self._timeout)))

    def delete_rows_before(self, model_version: str, time_ms: int, *, keep_reference: bool = True) -> int:
        """Delete rows of ``model_version`` older than ``time_ms`` (retention); the reference rows stay with
        ``keep_reference``. Returns how many Milvus reports deleted."""
        name = self._rows_name(model_version)
        template = "time_ms < {cut}" + (" and is_reference == false" if keep_reference else "")
        res = self._call(
            f"delete from {name}",
            lambda c: c.delete(name, timeout=self._timeout, **self._filter(template, {"cut": int(time_ms)})),
        )
        return deleted_count(res)

    def drop_rows_collection(self, model_version: str) -> None:
        """Drop the rows collection of ``model_version`` (no error when it does not exist)."""
        name = col.rows_collection_name(model_version)
        self._dims.pop(name, None)
        self._schemas.pop(name, None)
        self._call(f"drop {name}", lambda c: c.drop_collection(name, timeout=self._timeout))


def deleted_count(res: Any) -> int:
    """How many entities a delete removed: Milvus answers a dict with ``delete_count``, Milvus Lite the list
    of deleted primary keys."""
    if isinstance(res, Mapping):
        return int(res.get("delete_count", 0))
    return len(res) if isinstance(res, list) else 0


def _hit(hit: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    """One search hit as ``{"uid", "distance", **fields}``, distance = 1 - cosine similarity."""
    entity = hit.get("entity") or {}
    out = {"uid": hit["uid"], "distance": 1.0 - float(hit["distance"])}
    out.update({f: entity[f] for f in fields if f in entity and f != "uid"})
    return out
