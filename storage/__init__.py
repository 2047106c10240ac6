"""Store stage: everything Milvus (schemas, upsert, k-NN search, queries). Never imports receiver, model or sim."""

from storage.errors import StorageError
from storage.store import MilvusStore

__all__ = ["MilvusStore", "StorageError"]
