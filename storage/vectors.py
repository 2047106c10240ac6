"""Store stage: ``MilvusStore`` keeps the backlog, embedded rows and anomaly events in Milvus and searches them.

The store owns the process's one ``MilvusClient`` (pymilvus shares connections between clients with the
same URI, so closing a second client would break the first); build it in the composition root, close it
at shutdown. Every call carries ``timeout=``, every filter is a template filled from ``filter_params``,
and every pymilvus failure leaves as ``StorageError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import MilvusClient, MilvusException
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    ParamError,
    PrimaryKeyException,
)

from storage import collection as col
from storage import lite_patch
from storage.errors import StorageError

__all__ = ["MilvusStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

UPSERT_BATCH = 4096  # rows per upsert call ...
UPSERT_MAX_BYTES = 16 << 20  # ... and at most this many bytes of row JSON (Milvus caps a message at 64 MiB)
SEARCH_BATCH = 1024  # query vectors per search call
_MAX_QUERY_WINDOW = 16384  # Milvus caps limit (and offset + limit) of one query at 16384
_BACKLOG_FIELDS = ["uid", "signal", "service", "class_uid", "time_ms", "trace_id", "row"]
_ROW_FIELDS = [*_BACKLOG_FIELDS, "model_version", "score", "is_anomaly", "is_reference"]
_ANOMALY_FIELDS = [
    "uid",
    "source_uid",
    "signal",
    "service",
    "class_uid",
    "time_ms",
    "detected_ms",
    "score",
    "threshold",
    "model_version",
    "explanation",
    "event",
]
_WRAPPED = (MilvusException, grpc.RpcError, OSError)
# Refusals of the data itself (pymilvus's client-side checks): retrying the same rows cannot succeed.
_DATA_ERRORS = (ParamError, DataTypeNotMatchException, DataNotMatchException, PrimaryKeyException)
_INVALID_PARAMETER = 1100  # Milvus server error code for an invalid input value

# Milvus Lite runs in-process, one embedded server per .db path; several stores on one path share it.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


class MilvusStore:
    """Backlog, per-model-version rows and anomaly events in Milvus (Lite or server).

    Args:
        uri: a file path ending in ``.db`` (Milvus Lite, parent directory created), or
            ``http(s)://host:port`` (a Milvus server).
        token: Milvus token (``user:password`` or an API key); never logged.
        timeout_s: deadline of every Milvus call, in seconds.
        rows_index: embedding index of rows collections this store creates, ``flat`` or ``autoindex``
            (see ``collection.index_params``); an existing collection keeps the index it was made with.

    Raises:
        StorageError: the URI is unusable or Milvus does not answer.
    """

    def __init__(
        self, uri: str, *, token: str | None = None, timeout_s: float = 30.0, rows_index: str = "autoindex"
    ) -> None:
        if timeout_s <= 0:
            raise StorageError(f"timeout_s must be > 0, got {timeout_s}")
        if rows_index not in col.ROWS_INDEX_TYPES:
            raise StorageError(f"rows_index must be one of {', '.join(col.ROWS_INDEX_TYPES)}, got {rows_index!r}")
        self._rows_index = rows_index
        self._timeout = timeout_s
        self._uri = uri
        self._lite_path: str | None = None
        if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
            path = Path(uri).expanduser().resolve()
            if path.suffix != ".db":
                raise StorageError(
                    f"Milvus Lite path must end in .db (got {uri!r}); or use http://host:19530"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lite_path = str(path)
            lite_patch.apply()  # embedded Lite runs in this process: give it the faster flush
        self._dims: dict[str, int] = {}  # rows collections known to exist, with their dim
        self._schemas: dict[str, dict[str, Any]] = {}  # describe_collection of collections written columnwise
        try:
            if self._lite_path:
                with _lite_lock:
                    _lite_users[self._lite_path] = _lite_users.get(self._lite_path, 0) + 1
            self._client: MilvusClient | None = MilvusClient(
                self._lite_path or uri, token=token or "", timeout=timeout_s
            )
            version = str(self._client.get_server_version(timeout=timeout_s))
        except _WRAPPED as exc:
            self._release_lite()
            raise StorageError(f"cannot connect to Milvus at {self._where}: {exc}") from exc
        # Milvus Lite neither fills filter templates nor serialises concurrent writes in its engine, so
        # for Lite the store renders filters itself and lets one call in at a time. A server does both.
        self._lite_engine = version.startswith("milvus_lite")
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._lite_engine else contextlib.nullcontext()
        )
        logger.info("connected to Milvus %s at %s", version, self._where)
        self._create_if_missing(col.BACKLOG_COLLECTION, col.backlog_schema(), col.STRONG, placeholder=True)
        self._create_if_missing(
            col.ANOMALIES_COLLECTION,
            col.anomalies_schema(),
            col.STRONG,
            placeholder=True,
            time_field="detected_ms",
        )

    @property
    def _where(self) -> str:
        return f"Milvus Lite {self._lite_path}" if self._lite_path else self._uri.split("@")[-1]

    def close(self) -> None:
        """Close the client (and the embedded Lite server once its last store closes). Safe to call twice."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
            self._release_lite()

    def _release_lite(self) -> None:
        if not self._lite_path:
            return
        with _lite_lock:
            users = _lite_users.get(self._lite_path, 0) - 1
            if users > 0:
                _lite_users[self._lite_path] = users
                return
            _lite_users.pop(self._lite_path, None)
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(self._lite_path)

    def ping(self) -> bool:
        """Whether Milvus answers now (never raises)."""
        try:
            self._call("ping", lambda c: c.get_server_version(timeout=self._timeout))
        except StorageError:
            return False
        return True

    # --- plumbing -----------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[MilvusClient], T]) -> T:
        with self._lock:
            if self._client is None:
                raise StorageError(f"{what}: the Milvus store is closed")
            try:
                return fn(self._client)
            except _WRAPPED as exc:
                detail = getattr(exc, "message", None) or str(exc)
                raise StorageError(f"{what} failed on {self._where}: {detail}", retryable=not _about_data(exc)) from exc

    def _filter(self, template: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if self._lite_engine or not params:
            return {"filter": col.render_filter(template, params)}
        return {"filter": template, "filter_params": dict(params)}

    def _create_if_missing(
        self, name: str, schema: Any, consistency: str, *, placeholder: bool, time_field: str = "time_ms"
    ) -> None:
        def create(c: MilvusClient) -> None:
            if not c.has_collection(name, timeout=self._timeout):
                c.create_collection(name, schema=schema, consistency_level=consistency, timeout=self._timeout)
                # sync=False: pymilvus would otherwise poll each index with a 0.5 s sleep (1.5 s a
                # collection); an empty collection's index is ready at once and load_collection waits.
                params = col.index_params(
                    c, placeholder=placeholder, time_field=time_field, rows_index=self._rows_index
                )
                c.create_index(name, params, timeout=self._timeout, sync=False)
                logger.info("created Milvus collection %s", name)
            # Load after create, and again for a collection an earlier run left released.
            if str(c.get_load_state(name, timeout=self._timeout)["state"]) != "Loaded":
                c.load_collection(name, timeout=self._timeout)

        self._call(f"create collection {name}", create)

    def _upsert(self, name: str, rows: list[dict[str, Any]]) -> int:
        total = 0
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            res = self._call(
                f"upsert into {name}", lambda c, b=batch: c.upsert(name, b, timeout=self._timeout)
            )
            total += int(res["upsert_count"])
        return total

    def _describe(self, name: str) -> dict[str, Any]:
        desc = self._schemas.get(name)
        if desc is None:
            desc = self._call(
                f"describe {name}",
                lambda c: c._get_connection().describe_collection(name, timeout=self._timeout),
            )
            self._schemas[name] = desc
        return desc

    def _upsert_columns(self, name: str, columns: Mapping[str, list[Any]], n: int) -> int:
        """Upsert ``n`` rows given column by column (one list per schema field, vectors as lists of floats).

        pymilvus's row path (``MilvusClient.upsert``) type-checks and converts every value of every row in
        Python, which cost more than featurize + embed + score together; the column path hands each field's
        list to protobuf at once. It goes through the client's own connection handler (same channel, same
        retry and timeout handling) and checks VARCHAR lengths as the row path does.
        """
        desc = self._describe(name)
        fields = desc["fields"]
        missing = [f["name"] for f in fields if f["name"] not in columns]
        if missing:
            raise StorageError(f"upsert into {name}: no values for field(s) {', '.join(missing)}")
        sizes = [len(v) for v in columns.get("row", ())]
        total, start = 0, 0
        while start < n:
            end, size = min(n, start + UPSERT_BATCH), 0
            if sizes:
                for i in range(start, end):
                    size += sizes[i]
                    if size > UPSERT_MAX_BYTES and i > start:
                        end = i
                        break
            entities = [{"name": f["name"], "type": f["type"], "values": columns[f["name"]][start:end]}
                        for f in fields]
            res = self._call(
                f"upsert into {name}",
                lambda c, e=entities: c._get_connection().upsert(
                    name, e, timeout=self._timeout, schema=desc
                ),
            )
            total += int(res.upsert_count)
            start = end
        return total

    def _count(self, name: str, template: str = "", params: Mapping[str, Any] | None = None) -> int:
        res = self._call(
            f"count {name}",
            lambda c: c.query(
                name,
                output_fields=["count(*)"],
                timeout=self._timeout,
                consistency_level=col.STRONG,
                **self._filter(template, params),
            ),
        )
        return int(res[0]["count(*)"])

    def _iterate(
        self, name: str, template: str, params: Mapping[str, Any] | None, fields: list[str], batch: int
    ) -> Iterator[list[dict[str, Any]]]:
        # pymilvus's iterator appends its own pk cursor to the expression, so filters are always rendered.
        expr = col.render_filter(template, params)
        it = self._call(
            f"iterate {name}",
            lambda c: c.query_iterator(
                name,
                batch_size=min(batch, _MAX_QUERY_WINDOW),
                filter=expr,
                output_fields=fields,
                timeout=self._timeout,
            ),
        )
        try:
            while page := self._call(f"iterate {name}", lambda _c: it.next()):
                yield [dict(row) for row in page]
        finally:
            it.close()

    # --- backlog ------------------------------------------------------------------------------------

    def upsert_backlog(self, rows: list[dict[str, Any]]) -> int:
        """Upsert raw rows (keys: uid, signal, service, class_uid, time_ms, trace_id, row) keyed by uid."""
        if not rows:
            return 0
        columns = {f: [row[f] for row in rows] for f in ("uid", "signal", "service", "class_uid", "time_ms", "trace_id")}
        columns["row"] = [_encode_row(row["row"]) for row in rows]
        columns["embedding"] = [col.PLACEHOLDER_VECTOR] * len(rows)
        return self._upsert_columns(col.BACKLOG_COLLECTION, columns, len(rows))

    def count_backlog(self) -> int:
        return self._count(col.BACKLOG_COLLECTION)

    def delete_backlog(self, uids: list[str]) -> None:
        """Remove rows from the backlog by uid (they have been stored in a model version's rows collection)."""
        for start in range(0, len(uids), UPSERT_BATCH):
            part = uids[start : start + UPSERT_BATCH]
            self._call(
                f"delete from {col.BACKLOG_COLLECTION}",
                lambda c, p=part: c.delete(col.BACKLOG_COLLECTION, ids=p, timeout=self._timeout),
            )

    def iter_backlog(self, batch: int = 4096, *, after_time_ms: int | None = None) -> Iterator[list[dict]]:
        """Yield backlog rows in pages of up to ``batch`` (in no particular order), newer than ``after_time_ms``."""
        template, params = (
            ("time_ms > {after}", {"after": int(after_time_ms)}) if after_time_ms is not None else ("", None)
        )
        for page in self._iterate(col.BACKLOG_COLLECTION, template, params, _BACKLOG_FIELDS, batch):
            yield [_decode_row(r) for r in page]

    # --- embedded rows, one collection per model version --------------------------------------------

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
        columns = {f: [row[f] for row in rows] for f in _ROW_FIELDS if f not in ("row", "model_version")}
        columns["row"] = [row["row"] for row in rows]
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
        data["row"] = [r if isinstance(r, str) else _encode_row(r) for r in columns["row"]]
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
            chunk = queries[start : start + SEARCH_BATCH].tolist()
            res = self._call(
                f"search {name}",
                lambda c, q=chunk: c.search(
                    name,
                    data=q,
                    limit=k,
                    output_fields=fields or ["uid"],
                    anns_field="embedding",
                    search_params={"metric_type": "COSINE"},
                    timeout=self._timeout,
                    **flt,
                ),
            )
            for hits in res:
                results.append([_decode_row(_hit(h, fields)) for h in hits])
        return results

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
        fields = list(output_fields or _ROW_FIELDS)
        res = self._call(
            f"query {name}",
            lambda c: c.query(
                name,
                output_fields=fields,
                limit=min(limit, _MAX_QUERY_WINDOW),
                timeout=self._timeout,
                **self._filter(filter, filter_params),
            ),
        )
        return [_decode_row(dict(row)) for row in res]

    def count_rows(self, model_version: str) -> int:
        return self._count(self._rows_name(model_version))

    def drop_rows_collection(self, model_version: str) -> None:
        """Drop the rows collection of ``model_version`` (no error when it does not exist)."""
        name = col.rows_collection_name(model_version)
        self._dims.pop(name, None)
        self._schemas.pop(name, None)
        self._call(f"drop {name}", lambda c: c.drop_collection(name, timeout=self._timeout))

    # --- anomaly events -----------------------------------------------------------------------------

    def upsert_anomalies(self, events: list[dict[str, Any]]) -> int:
        """Upsert anomaly events keyed by finding uid (a replay overwrites, never duplicates)."""
        if not events:
            return 0
        data = [{**event, "embedding": col.PLACEHOLDER_VECTOR} for event in events]
        return self._upsert(col.ANOMALIES_COLLECTION, data)

    def existing_anomaly_uids(self, uids: list[str]) -> set[str]:
        """Which of these finding uids are already stored (a replay must not emit them again)."""
        return self._existing(col.ANOMALIES_COLLECTION, uids)

    def existing_row_uids(self, model_version: str, uids: list[str]) -> set[str]:
        """Which of these row uids are already stored in the rows collection of ``model_version``."""
        return self._existing(self._rows_name(model_version), uids)

    def _existing(self, name: str, uids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(uids), 1000):
            part = uids[start : start + 1000]
            res = self._call(
                f"query {name}",
                lambda c, p=part: c.query(
                    name,
                    output_fields=["uid"],
                    limit=len(p),
                    timeout=self._timeout,
                    consistency_level=col.STRONG,
                    **self._filter("uid in {uids}", {"uids": p}),
                ),
            )
            found.update(str(row["uid"]) for row in res)
        return found

    def count_anomalies(self) -> int:
        return self._count(col.ANOMALIES_COLLECTION)

    def latest_anomalies(
        self,
        limit: int = 20,
        *,
        service: str | None = None,
        min_score: float | None = None,
        since_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """The ``limit`` most recently detected anomalies, newest ``detected_ms`` first.

        Milvus queries have no ORDER BY, so this finds a recent ``detected_ms`` window holding at least
        ``limit`` matches with ``count(*)`` queries (growing 4x from one minute, then bisecting if a burst
        overshoots), fetches that window and sorts it.
        """
        if limit <= 0:
            return []
        clauses, params = [], {}
        for clause, key, value in (
            ("service == {service}", "service", service),
            ("score >= {min_score}", "min_score", min_score),
        ):
            if value is not None:
                clauses.append(clause)
                params[key] = value
        lo = self._window_start(clauses, params, limit, since_ms)
        if lo is not None:
            clauses.append("detected_ms >= {lo}")
            params["lo"] = lo
        template = " and ".join(clauses)
        if self._count(col.ANOMALIES_COLLECTION, template, params) <= _MAX_QUERY_WINDOW:
            rows = self._call(
                "query anomalies",
                lambda c: c.query(
                    col.ANOMALIES_COLLECTION,
                    output_fields=_ANOMALY_FIELDS,
                    limit=_MAX_QUERY_WINDOW,
                    timeout=self._timeout,
                    **self._filter(template, params),
                ),
            )
        else:  # many events share the newest timestamps: page through them
            rows = [
                r
                for page in self._iterate(col.ANOMALIES_COLLECTION, template, params, _ANOMALY_FIELDS, 4096)
                for r in page
            ]
        rows = [dict(r) for r in rows]
        rows.sort(key=lambda r: (r["detected_ms"], r["uid"]), reverse=True)
        return rows[:limit]

    def _window_start(
        self, clauses: list[str], params: dict[str, Any], limit: int, floor: int | None
    ) -> int | None:
        """Start of the newest ``detected_ms`` window with >= ``limit`` matches (None = all time)."""

        def count_from(lo: int) -> int:
            return self._count(
                col.ANOMALIES_COLLECTION,
                " and ".join([*clauses, "detected_ms >= {lo}"]),
                {**params, "lo": lo},
            )

        cap = max(8 * limit, 1000)
        now = int(time.time() * 1000)
        newer, span = now, 60_000
        while True:
            lo = now - span
            if floor is not None and lo <= floor:
                return floor
            if lo <= 0:
                return None
            found = count_from(lo)
            if found >= limit:
                break
            newer, span = lo, span * 4
        for _ in range(32):  # a burst: narrow [lo, newer) until the window holds limit..cap matches
            if found <= cap or newer - lo <= 1:
                break
            mid = (lo + newer) // 2
            mid_found = count_from(mid)
            if mid_found < limit:
                newer = mid
            else:
                lo, found = mid, mid_found
        return lo


def _about_data(exc: BaseException) -> bool:
    """Whether Milvus refused the data of the call (not an outage): the same rows would fail again."""
    if isinstance(exc, _DATA_ERRORS):
        return True
    return isinstance(exc, MilvusException) and getattr(exc, "code", None) == _INVALID_PARAMETER


def _hit(hit: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    entity = hit.get("entity") or {}
    out = {"uid": hit["uid"], "distance": 1.0 - float(hit["distance"])}
    out.update({f: entity[f] for f in fields if f in entity and f != "uid"})
    return out


def _encode_row(row: Any) -> str:
    """A row dict as compact JSON. The receiver bounds every row where it enters (receiver/rows/bounds.py), so
    a row that still does not fit is refused as data (the pipeline sets it aside), never cut silently."""
    text = json.dumps(row, separators=(",", ":"), default=str)
    size = len(text.encode())
    if size > col.ROW_MAX:
        uid = row.get("uid") if isinstance(row, dict) else None
        raise StorageError(f"row {uid!r} is {size} bytes of JSON, over the {col.ROW_MAX}-byte row field",
                           retryable=False)
    return text


def _decode_row(item: dict[str, Any]) -> dict[str, Any]:
    value = item.get("row")
    if isinstance(value, str):
        item["row"] = json.loads(value)
    return item
