"""Storage stage errors: the one exception type that leaves ``storage/``.

Every pymilvus ``MilvusException`` and connection failure is translated at this boundary
(``raise StorageError(...) from exc``, as httpx maps httpcore errors), so nothing above
``storage/`` imports pymilvus. The chained ``__cause__`` keeps the original error for logs.
"""

from __future__ import annotations

__all__ = ["StorageError"]


class StorageError(Exception):
    """Milvus could not do what was asked: unreachable, timed out, or refused the call.

    ``retryable`` is False when Milvus (or pymilvus's own checks) refused the *data* — a value too long for
    its field, a wrong type — so the same call will fail again however long the caller waits; True for
    outages, timeouts and anything not known to be about the data.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
