"""Store stage: ``MilvusStore`` keeps the backlog, embedded rows and anomaly events in Milvus and searches them.

``MilvusStore`` is the per-collection mixins (backlog.py, rows.py, anomalies.py) over one ``StoreCore``
(core.py): the core sits in its own module so each mixin can subclass it, which lets mypy check every
operation against the real plumbing without an import cycle. Field layouts and schemas live in
collection.py. Every call carries ``timeout=``, every filter is a template filled from ``filter_params``,
and every pymilvus failure leaves as ``StorageError``.
"""

from __future__ import annotations

from storage.anomaly_query import AnomalyQueryMixin
from storage.backlog import BacklogMixin
from storage.feedback import FeedbackMixin
from storage.rows import RowsMixin

__all__ = ["MilvusStore"]


class MilvusStore(BacklogMixin, RowsMixin, AnomalyQueryMixin, FeedbackMixin):
    """Backlog, per-model-version rows and anomaly events in Milvus (Lite or server).

    The store owns the process's one ``MilvusClient``: build it in the composition root, close it at
    shutdown.

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
