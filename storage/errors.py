"""Storage stage errors: the one exception type that leaves ``storage/``.

Every pymilvus ``MilvusException`` and connection failure is translated at this boundary
(``raise StorageError(...) from exc``, as httpx maps httpcore errors), so nothing above
``storage/`` imports pymilvus. The chained ``__cause__`` keeps the original error for logs.
"""

from __future__ import annotations

__all__ = ["StorageError"]


class StorageError(Exception):
    """Milvus could not do what was asked: unreachable, timed out, or refused the call."""
