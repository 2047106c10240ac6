"""Log message templates: mined with drain3 at training time, matched by a small deterministic matcher.

Mining quality rests on masking (the lesson of the Drain/Loghub benchmarks): before drain sees a message,
tokens that are obviously variable become the wildcard — anything holding a digit (ids, numbers, IPs,
durations, versions), quoted strings, `key=value` values, URL query strings, e-mail addresses, and hex or
base64-like blobs. Drain then merges messages whose *fixed* tokens mostly agree (`_Drain`): a position the
template already generalised neither helps nor hurts, so a template with many variable fields does not keep
spawning near-copies of itself (8.5k templates on 50k access-log lines before; a few dozen after).

drain3 persists its state with jsonpickle (object construction on load), and otad never unpickles, so a
model version keeps only the template strings; serving matches messages against them. Templates seen fewer
than `min_count` times in training are not kept: at serving time such messages are "unseen", which is what
they are for a detector (rare-message faults).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence

from drain3.drain import Drain

logger = logging.getLogger(__name__)

WILDCARD = "<*>"
_MAX_TOKENS = 32
_MAX_CHARS = 512
_SEEN_MAX = 65_536  # messages remembered by NewTemplates (cleared when full)

_QUOTED = re.compile(r"'[^']{0,200}'|`[^`]{0,200}`")
_EMAIL = re.compile(r"^[\w.+-]+@[\w-]+\.[\w.-]+$")
_BLOB = re.compile(r"^[A-Za-z0-9+/_-]{24,}={0,2}$")
_HEXISH = re.compile(r"^(0x)?[0-9a-fA-F]{8,}$")


def _mask_token(token: str) -> str:
    if len(token) < 8 and token.isalpha():  # the common case: a short word (the patterns below need 8+ chars)
        return token
    if any(c.isdigit() for c in token):
        return WILDCARD
    if "=" in token:  # key=value: the key is structure, the value is data
        key, _, value = token.partition("=")
        return f"{key}={WILDCARD}" if key and value else token
    if "?" in token and "/" in token:  # a URL with a query string: keep the path
        return token.split("?", 1)[0]
    if "@" in token and _EMAIL.match(token.strip("<>()[],;:\"'")):
        return WILDCARD
    if _BLOB.match(token) or _HEXISH.match(token):
        return WILDCARD
    return token


def tokenize(message: str) -> list[str]:
    """The masked tokens of a message (the matcher's and the miner's common view)."""
    text = _QUOTED.sub(WILDCARD, message[:_MAX_CHARS])
    return [_mask_token(t) for t in text.split()[:_MAX_TOKENS]]


class _Drain(Drain):
    """Drain whose similarity counts only the template's fixed tokens (see the module docstring)."""

    def get_seq_distance(
        self, seq1: Sequence[str], seq2: Sequence[str], include_params: bool
    ) -> tuple[float, int]:
        fixed = same = params = 0
        for t, m in zip(seq1, seq2, strict=True):
            if t == self.param_str:
                params += 1
                continue
            fixed += 1
            same += t == m
        if not fixed:
            return 1.0, params
        return same / fixed, params


def mine(messages: list[str], sim_th: float = 0.6, depth: int = 4, min_count: int = 3) -> list[str]:
    """Mine templates with drain3. Returns the template strings seen at least `min_count` times,
    most frequent first."""
    drain = _Drain(
        depth=depth, sim_th=sim_th, max_children=100, param_str=WILDCARD, parametrize_numeric_tokens=True
    )
    seen: dict[str, int] = {}
    for message in messages:
        key = " ".join(tokenize(message))
        seen[key] = seen.get(key, 0) + 1
    # drain is order-sensitive only in which wording a cluster starts from; masked duplicates add nothing
    # but their count, so each distinct masked message is added once and weighted afterwards.
    cluster_of: dict[str, int] = {}
    for key in seen:
        cluster, _ = drain.add_log_message(key)
        cluster_of[key] = cluster.cluster_id
    sizes: dict[int, int] = {}
    for key, n in seen.items():
        sizes[cluster_of[key]] = sizes.get(cluster_of[key], 0) + n
    clusters = {c.cluster_id: c for c in drain.clusters}
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    templates = [" ".join(clusters[cid].log_template_tokens) for cid, n in ranked if n >= min_count]
    logger.info(
        "templates: %d mined from %d messages (%d distinct after masking), %d kept (>= %d messages)",
        len(clusters),
        len(messages),
        len(seen),
        len(templates),
        min_count,
    )
    return list(dict.fromkeys(templates))


def similarity(template: Sequence[str], tokens: Sequence[str]) -> float:
    """Share of the template's fixed tokens that the message's tokens (of the same length) repeat."""
    same = fixed = 0
    for t, m in zip(template, tokens, strict=True):
        if t != WILDCARD:
            fixed += 1
            same += t == m
    return same / fixed if fixed else 1.0


class TemplateMatcher:
    """Maps a message to the index of its template, or -1 when no template fits (a new kind of message).

    A template fits when it has the same number of tokens and at least `sim_th` of its fixed tokens equal
    the message's (the miner's rule). Results are cached per masked message, so the scan over templates
    runs once per distinct message shape, not once per record.
    """

    def __init__(self, templates: list[str], sim_th: float = 0.6, cache_size: int = 65_536):
        self.templates = list(templates)
        self.sim_th = sim_th
        self._by_len: dict[int, list[tuple[int, list[str]]]] = {}
        for index, template in enumerate(self.templates):
            tokens = template.split()
            self._by_len.setdefault(len(tokens), []).append((index, tokens))
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def match(self, message: str) -> int:
        tokens = tokenize(message)
        key = " ".join(tokens)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        best, best_sim = -1, -1.0
        for index, template in self._by_len.get(len(tokens), ()):
            sim = similarity(template, tokens)
            if sim > best_sim:
                best, best_sim = index, sim
        result = best if best_sim >= self.sim_th else -1
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result


class NewTemplates:
    """Templates of the messages no trained template fits, learned while serving by the miner's own rule: a message
    joins the most similar template of its length when at least `sim_th` of that template's fixed tokens agree
    (the tokens that differ become wildcards), else it starts one. A new kind of message with a variable word in
    it (a path, a name without digits) is then one kind whose count grows, not a new message each time.

    Each template is keyed by the masked text of the message that started it, which never changes; the least
    recently matched are forgotten past `max_templates`.
    """

    def __init__(self, sim_th: float = 0.6, max_templates: int = 5_000) -> None:
        self.sim_th = sim_th
        self.max_templates = max_templates
        self.templates: OrderedDict[str, list[str]] = OrderedDict()  # key -> current tokens
        self._by_len: dict[
            int, dict[str, None]
        ] = {}  # token count -> keys, in creation order (deterministic)
        # message, and masked text, -> its key: the same message is the same kind, and a repeat is not masked again
        self._seen: dict[str, str] = {}

    def key(self, message: str) -> str:
        """The key of the message's template (learning it): "~" and the masked text that started it."""
        known = self._seen.get(message)
        if known is None:
            tokens = tokenize(message)
            text = " ".join(tokens)
            known = self._seen.get(text)
            if known is None or known not in self.templates:
                known = self._learn(tokens, text)
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[message] = self._seen[text] = known
        elif known not in self.templates:  # forgotten since: learned again
            del self._seen[message]
            return self.key(message)
        self.templates.move_to_end(known)
        return known

    def _learn(self, tokens: list[str], text: str) -> str:
        best, best_sim = "", -1.0
        for key in self._by_len.get(len(tokens), ()):
            sim = similarity(self.templates[key], tokens)
            if sim > best_sim:
                best, best_sim = key, sim
        if best_sim >= self.sim_th:
            self.templates[best] = [
                t if t == m else WILDCARD for t, m in zip(self.templates[best], tokens, strict=True)
            ]
            self.templates.move_to_end(best)
            return best
        key = "~" + text[:160]
        if key in self.templates:  # a longer message with the same first 160 characters
            key += f" ~{len(tokens)}"
        self._by_len.setdefault(len(tokens), {})[key] = None
        self.templates[key] = tokens
        if len(self.templates) > self.max_templates:
            old, gone = self.templates.popitem(last=False)
            self._by_len[len(gone)].pop(old, None)
        return key

    def state(self) -> list[list[str]]:
        return [[key, " ".join(tokens)] for key, tokens in self.templates.items()]

    @classmethod
    def from_state(cls, rows: list[list[str]], sim_th: float = 0.6) -> NewTemplates:
        out = cls(sim_th)
        for key, text in rows:
            tokens = text.split()
            out.templates[key] = tokens
            out._by_len.setdefault(len(tokens), {})[key] = None
        return out
