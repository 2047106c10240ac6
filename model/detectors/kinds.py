"""New kinds of record: a log message no trained template fits, or a span operation or RPC method training never saw.

A new kind is novel as a whole until it has history of its own: every global-novelty member calls each of its
first rows unlike anything before, and a new kind of ordinary message would raise an alert per record until the
pattern member has counted it and k-NN has neighbours for it. So a kind warms up. Its first row is judged as any row: a new kind of message can
be the incident, and then it is one event. Its later rows, in every batch that starts with fewer than
`warmup_rows` of its rows seen, rank by the global-novelty members' findings but do not alert on them, and are
learned. A failed row (a failure status, severity ERROR or above) has no warm-up: what is anomalous regardless of
novelty still alerts, and so does a warm row's extreme latency or failure burst, which the members judging a row
against its own entity find.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from model.detectors.base import Frame
from model.features import OOV  # the vocabulary's index of a value training never saw (or saw once)
from model.templates import NewTemplates

# The columns that name what a row is (its message template, its span operation, its RPC method).
KIND_COLUMNS = ("template", "trace.span.operation", "api.operation")
# Rows of a kind seen before its novelty alone can alert: k-NN learns a sample of each batch and needs k (10) of
# the kind among its reference rows; the pattern member needs a count that says how common the kind is.
WARMUP_ROWS = 50
MAX_KINDS = 5_000  # kinds remembered; the least recently seen is forgotten first
NOTICES_PER_BATCH = 10  # notice lines per batch; past that, one line counts the rest
# Kinds told one by one per (service, signal); past that (span names with ids in them, say) they are counted only.
NOTICES_PER_SOURCE = 100


class Notice(NamedTuple):
    """New entities, told once: `entity` is "source" or "kind", `text` the log line ("" = counted, not logged),
    `n` how many entities it tells of."""

    entity: str
    text: str
    n: int = 1


class NewKinds:
    """The kinds first seen after training, per (service, signal), and how many rows of each were seen."""

    def __init__(self, warmup_rows: int = WARMUP_ROWS, max_kinds: int = MAX_KINDS) -> None:
        self.warmup_rows = warmup_rows
        self.max_kinds = max_kinds
        # Grouping unseen messages is costly: the ensemble shares the pattern member's, when it has one.
        self.templates, self.shared = NewTemplates(), False
        self.seen: OrderedDict[str, int] = OrderedDict()  # "<source>\x1f<column>\x1f<kind>" -> rows seen
        self.told: dict[str, int] = {}  # source -> kinds told of it one by one

    def use(self, templates: NewTemplates) -> None:
        """Group unseen messages with `templates` (the pattern member's), not a copy of its work."""
        self.templates, self.shared = templates, True

    def _kinds(self, frame: Frame) -> list[tuple[str, str] | None]:
        """(column, kind) of each row whose kind training never saw, None for the others and for failed rows."""
        names = frame.contract.categorical if frame.contract is not None else []
        cols = [c for c in KIND_COLUMNS if c in names] if frame.cat.shape[1] == len(names) else []
        first_oov = [-1] * len(frame)
        if cols:
            oov = frame.cat[:, [names.index(c) for c in cols]] == OOV
            first_oov = np.where(oov.any(axis=1), oov.argmax(axis=1), -1).tolist()
        out: list[tuple[str, str] | None] = [None] * len(frame)
        for i, d in enumerate(frame.derived):
            if d.get("failed"):
                continue
            message = d.get("_message")
            if d.get("template") == "<unseen>" and isinstance(message, str):
                out[i] = ("template", self.templates.key(message))
            elif first_oov[i] >= 0:
                name = cols[first_oov[i]]
                out[i] = (name, str(d.get(name)))
        return out

    def warm(self, frame: Frame, covered: np.ndarray | None = None) -> tuple[np.ndarray, list[Notice]]:
        """Per row: whether its kind is in its warm-up (fewer than `warmup_rows` of its rows before this batch,
        so the whole batch that meets a kind first is warm, however many of its rows it holds); and a notice
        for each kind first seen, except on rows in `covered` (a new source's kinds come with its notice).
        Counts the batch's rows."""
        warm = np.zeros(len(frame), dtype=bool)
        notices: list[Notice] = []
        quiet = 0  # kinds counted but not logged (their source's budget of lines is spent)
        spent: list[str] = []  # sources whose budget this batch spends
        batch: dict[str, int] = {}
        for i, (source, kind) in enumerate(zip(frame.sources, self._kinds(frame), strict=True)):
            if kind is None:
                continue
            key = f"{source}\x1f{kind[0]}\x1f{kind[1]}"
            first = key not in self.seen and key not in batch
            # The kind's first row is judged as any row (one event when it is anomalous: a new kind of message
            # can be the incident); the rest of its warm-up ranks but does not alert.
            warm[i] = not first and self.seen.get(key, 0) < self.warmup_rows
            if first and (covered is None or not covered[i]):
                n = self.told[source] = self.told.get(source, 0) + 1
                if n <= NOTICES_PER_SOURCE:
                    notices.append(self._notice(source, *kind))
                    spent += [source] if n == NOTICES_PER_SOURCE else []
                else:
                    quiet += 1
            batch[key] = batch.get(key, 0) + 1
        for key, n in batch.items():
            self.seen[key] = self.seen.get(key, 0) + n
            self.seen.move_to_end(key)
        while len(self.seen) > self.max_kinds:
            self.seen.popitem(last=False)
        if len(notices) > NOTICES_PER_BATCH:
            more = len(notices) - NOTICES_PER_BATCH
            notices = notices[:NOTICES_PER_BATCH] + [
                Notice(
                    "kind",
                    f"... and {more} more new kinds of record in this batch, each warming up alike",
                    more,
                )
            ]
        for source in spent:
            service, signal = source.split("\x1f")
            notices.append(
                Notice(
                    "kind",
                    f"the {signal} of {service!r} has had {NOTICES_PER_SOURCE} new kinds of record: later ones are"
                    " counted in otad_new_kinds_total, not logged",
                    0,
                )
            )
        if quiet:
            notices.append(Notice("kind", "", quiet))
        return warm, notices

    def _notice(self, source: str, column: str, kind: str) -> Notice:
        service, signal = source.split("\x1f")
        what = {
            "template": "message",
            "trace.span.operation": "span operation",
            "api.operation": "RPC method",
        }
        shown = kind[1:] if column == "template" and kind.startswith("~") else kind
        text = (
            f"new {what[column]} in {signal} of {service!r}: {shown[:120]!r}; its first record is judged, the"
            f" next {self.warmup_rows} are learned and their novelty alone does not alert"
        )
        return Notice("kind", text)

    def state(self) -> dict[str, Any]:
        return {
            "seen": [[k, n] for k, n in self.seen.items()],
            "templates": [] if self.shared else self.templates.state(),  # shared: saved by the pattern member
            "told": self.told,
        }

    @classmethod
    def from_state(cls, values: dict[str, Any]) -> NewKinds:
        out = cls()
        out.seen = OrderedDict((str(k), int(n)) for k, n in values.get("seen", []))
        out.templates = NewTemplates.from_state(values.get("templates", []))
        out.told = {str(k): int(n) for k, n in values.get("told", {}).items()}
        return out
