"""Store stage: everything Milvus (schemas, upsert, k-NN search, queries). Never imports receiver or model."""

from storage.errors import StorageError
from storage.vectors import MilvusStore

__all__ = ["MilvusStore", "StorageError"]
