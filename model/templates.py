"""Log message templates: mined with drain3 at training time, matched by a small deterministic matcher.

drain3 persists its state with jsonpickle (object construction on load), and otad never unpickles,
so a model version keeps only the mined template strings; serving matches messages against them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from drain3 import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

logger = logging.getLogger(__name__)

WILDCARD = "<*>"
_MAX_TOKENS = 48
_MAX_CHARS = 512


def tokenize(message: str) -> list[str]:
    """Whitespace tokens, with any token holding a digit replaced by the wildcard (ids, numbers, IPs)."""
    tokens = message[:_MAX_CHARS].split()[:_MAX_TOKENS]
    return [WILDCARD if any(c.isdigit() for c in t) else t for t in tokens]


def mine(messages: list[str], sim_th: float = 0.5, depth: int = 4) -> list[str]:
    """Mine templates with drain3. Returns the template strings, most frequent first."""
    config = TemplateMinerConfig()
    config.drain_sim_th = sim_th
    config.drain_depth = depth
    config.profiling_enabled = False
    config.parametrize_numeric_tokens = True
    miner = TemplateMiner(config=config)
    for message in messages:
        miner.add_log_message(" ".join(tokenize(message)))
    clusters = sorted(miner.drain.clusters, key=lambda c: -c.size)
    return [" ".join(c.log_template_tokens) for c in clusters]


class TemplateMatcher:
    """Maps a message to the index of its template, or -1 when no template fits (a new kind of message).

    A template fits when it has the same number of tokens and at least `sim_th` of its non-wildcard
    tokens equal the message's (drain's similarity rule). Results are cached per message prefix.
    """

    def __init__(self, templates: list[str], sim_th: float = 0.5, cache_size: int = 65_536):
        self.templates = list(templates)
        self.sim_th = sim_th
        self._by_len: dict[int, list[tuple[int, list[str]]]] = {}
        for index, template in enumerate(self.templates):
            tokens = template.split()
            self._by_len.setdefault(len(tokens), []).append((index, tokens))
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def match(self, message: str) -> int:
        key = message[:_MAX_CHARS]
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tokens = tokenize(message)
        best, best_sim = -1, -1.0
        for index, template in self._by_len.get(len(tokens), ()):
            same = fixed = 0
            for t, m in zip(template, tokens, strict=True):
                if t != WILDCARD:
                    fixed += 1
                    same += t == m
            sim = same / fixed if fixed else 1.0
            if sim > best_sim:
                best, best_sim = index, sim
        result = best if best_sim >= self.sim_th else -1
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result
