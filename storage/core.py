"""Store stage, plumbing: the one ``MilvusClient``, error mapping and the calls every collection shares.

``StoreCore`` owns the process's one client (pymilvus shares connections between clients with the same URI,
so closing a second client would break the first). Every call goes through ``_call``, which carries the
lock, turns each pymilvus failure into ``StorageError`` and says whether retrying can help; every filter
goes through ``_filter``, which fills templates from ``filter_params``. The per-collection operations in
backlog.py, rows.py and anomalies.py subclass it, and store.py combines them into ``MilvusStore``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pymilvus import CollectionSchema, MilvusClient, MilvusException
from pymilvus.exceptions import (
    DataNotMatchException,
    DataTypeNotMatchException,
    ParamError,
    PrimaryKeyException,
)

from storage import collection as col
from storage import lite_patch
from storage.errors import StorageError
from storage.lite_process import is_lite_uri

__all__ = ["MAX_QUERY_WINDOW", "UPSERT_BATCH", "StoreCore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

UPSERT_BATCH = 4096  # rows per upsert (or delete) call ...
UPSERT_MAX_BYTES = 16 << 20  # ... and at most this many bytes of row JSON (Milvus caps a message at 64 MiB)
MAX_QUERY_WINDOW = 16384  # Milvus caps limit (and offset + limit) of one query at 16384
_EXISTING_BATCH = 1000  # uids per "uid in [...]" lookup
_WRAPPED = (MilvusException, grpc.RpcError, OSError)
# Refusals of the data itself (pymilvus's client-side checks): retrying the same rows cannot succeed.
_DATA_ERRORS = (ParamError, DataTypeNotMatchException, DataNotMatchException, PrimaryKeyException)
_INVALID_PARAMETER = 1100  # Milvus server error code for an invalid input value

# Milvus Lite runs in-process, one embedded server per .db path; several stores on one path share it.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


class StoreCore:
    """Connection, locking and shared calls of ``MilvusStore`` (its docstring documents the arguments).

    Raises:
        StorageError: the URI is unusable or Milvus does not answer.
    """

    def __init__(
        self, uri: str, *, token: str | None = None, timeout_s: float = 30.0, rows_index: str = "autoindex"
    ) -> None:
        if timeout_s <= 0:
            raise StorageError(f"timeout_s must be > 0, got {timeout_s}")
        if rows_index not in col.ROWS_INDEX_TYPES:
            raise StorageError(
                f"rows_index must be one of {', '.join(col.ROWS_INDEX_TYPES)}, got {rows_index!r}"
            )
        self._rows_index = rows_index
        self._timeout = timeout_s
        self._uri = uri
        self._lite_path = _lite_db_path(uri) if is_lite_uri(uri) else None
        if self._lite_path:
            lite_patch.apply()  # embedded Lite runs in this process: give it the faster flush
        self._dims: dict[str, int] = {}  # rows collections known to exist, with their dim (rows.py)
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

    def _call(self, what: str, fn: Callable[[MilvusClient], T]) -> T:
        """``fn(client)`` under the store's lock; any pymilvus or connection failure raises ``StorageError``."""
        with self._lock:
            if self._client is None:
                raise StorageError(f"{what}: the Milvus store is closed")
            try:
                return fn(self._client)
            except _WRAPPED as exc:
                detail = getattr(exc, "message", None) or str(exc)
                raise StorageError(
                    f"{what} failed on {self._where}: {detail}", retryable=not _about_data(exc)
                ) from exc

    def _filter(self, template: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for a filtered call: the template and its params, or (for Lite) rendered."""
        if self._lite_engine or not params:
            return {"filter": col.render_filter(template, params)}
        return {"filter": template, "filter_params": dict(params)}

    def _create_if_missing(
        self,
        name: str,
        schema: CollectionSchema | None,
        consistency: str,
        *,
        placeholder: bool,
        time_field: str = "time_ms",
    ) -> None:
        """Create collection ``name`` with its indexes unless it exists, then load it if it is not loaded."""

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
        """Upsert row dicts through pymilvus's row path, ``UPSERT_BATCH`` at a time; returns the count."""
        total = 0
        for start in range(0, len(rows), UPSERT_BATCH):
            total += self._upsert_batch(name, rows[start : start + UPSERT_BATCH])
        return total

    def _upsert_batch(self, name: str, batch: list[dict[str, Any]]) -> int:
        res = self._call(f"upsert into {name}", lambda c: c.upsert(name, batch, timeout=self._timeout))
        return int(res["upsert_count"])

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
            end = _batch_end(sizes, start, n)
            entities = [
                {"name": f["name"], "type": f["type"], "values": columns[f["name"]][start:end]}
                for f in fields
            ]
            total += self._upsert_entities(name, desc, entities)
            start = end
        return total

    def _upsert_entities(self, name: str, desc: dict[str, Any], entities: list[dict[str, Any]]) -> int:
        res = self._call(
            f"upsert into {name}",
            lambda c: c._get_connection().upsert(name, entities, timeout=self._timeout, schema=desc),
        )
        return int(res.upsert_count)

    def _count(self, name: str, template: str = "", params: Mapping[str, Any] | None = None) -> int:
        """Entities of ``name`` matching the filter template, read with Strong consistency."""
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
        """Pages of up to ``batch`` entities of ``name`` matching the filter template, in no set order."""
        # pymilvus's iterator appends its own pk cursor to the expression, so filters are always rendered.
        expr = col.render_filter(template, params)
        it = self._call(
            f"iterate {name}",
            lambda c: c.query_iterator(
                name,
                batch_size=min(batch, MAX_QUERY_WINDOW),
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

    def _existing(self, name: str, uids: list[str]) -> set[str]:
        """Which of ``uids`` are stored in collection ``name`` (read with Strong consistency)."""
        found: set[str] = set()
        for start in range(0, len(uids), _EXISTING_BATCH):
            found.update(self._existing_part(name, uids[start : start + _EXISTING_BATCH]))
        return found

    def _existing_part(self, name: str, part: list[str]) -> set[str]:
        res = self._call(
            f"query {name}",
            lambda c: c.query(
                name,
                output_fields=["uid"],
                limit=len(part),
                timeout=self._timeout,
                consistency_level=col.STRONG,
                **self._filter("uid in {uids}", {"uids": part}),
            ),
        )
        return {str(row["uid"]) for row in res}


def _lite_db_path(uri: str) -> str:
    """The resolved Milvus Lite database path of ``uri``, its parent directory created."""
    path = Path(uri).expanduser().resolve()
    if path.suffix != ".db":
        raise StorageError(f"Milvus Lite path must end in .db (got {uri!r}); or use http://host:19530")
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _batch_end(sizes: list[int], start: int, n: int) -> int:
    """End of the upsert batch from ``start``: at most ``UPSERT_BATCH`` rows and ``UPSERT_MAX_BYTES`` of
    ``row`` JSON (``sizes``, empty when there is no row field), but always at least one row."""
    end = min(n, start + UPSERT_BATCH)
    if not sizes:
        return end
    size = 0
    for i in range(start, end):
        size += sizes[i]
        if size > UPSERT_MAX_BYTES and i > start:
            return i
    return end


def _about_data(exc: BaseException) -> bool:
    """Whether Milvus refused the data of the call (not an outage): the same rows would fail again."""
    if isinstance(exc, _DATA_ERRORS):
        return True
    return isinstance(exc, MilvusException) and getattr(exc, "code", None) == _INVALID_PARAMETER
