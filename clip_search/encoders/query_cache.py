"""The per-process LRU cache of query vectors, shared by every text encoder.

Torch-free: the torch ``TextEncoder`` and the cached-graph ``GraphTextEncoder`` keep the same
cache, stats and log line, whichever a web process runs.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

logger = logging.getLogger("clip_search.encoders.text")

# How often (in queries) a process logs its query cache's hit rate.
CACHE_LOG_EVERY = 1000


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class QueryCache:
    """``encode_query`` over a subclass's ``encode(texts)``; call ``_init_cache`` in ``__init__``."""

    def _init_cache(self, cache_size: int) -> None:
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_query(self, text: str) -> np.ndarray:
        """One query's vector, cached: the same words cost a dict look-up the second time.
        Every ``CACHE_LOG_EVERY`` queries the hit rate goes to the log (``cache_info()``)."""
        key = " ".join(text.split()).lower()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                self._log_rate()
                return cached
            self.misses += 1
            self._log_rate()
        vector = self.encode([key])[0]
        vector.setflags(write=False)
        if self._cache_size:
            with self._lock:
                self._cache[key] = vector
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vector

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def cache_info(self) -> CacheInfo:
        """Hits, misses and entries of this process's query cache, like ``functools.lru_cache``'s."""
        with self._lock:
            return CacheInfo(self.hits, self.misses, self._cache_size, len(self._cache))

    def _log_rate(self) -> None:
        queries = self.hits + self.misses
        if queries % CACHE_LOG_EVERY == 0:
            logger.info("clip_search query cache: %.0f %% hits over %d queries (%d of %d entries used)",
                        100 * self.hits / queries, queries, len(self._cache), self._cache_size)


def warn_truncated(texts: Sequence[str], cut: Sequence[bool], context_length: int) -> None:
    for text, truncated in zip(texts, cut, strict=True):
        if truncated:
            logger.warning("Query truncated to %d tokens: %.60s…", context_length, text)
