"""Reads that decide a write come from where the write goes, whatever the shop's routers say.

A shop with read replicas routes reads to a standby (``db_for_read``). Search is content
with that: it only reads. But indexing, the save handlers, the sweep, ``clip_reindex`` and staff
decisions read what they are about to write (a product's sources, its row, its images'
verdicts), and a standby has not yet replayed the latest commits and never sees the caller's
open transaction. Read there, a worker drops a just-saved product as deleted, a save handler
compares the old product with the old row and queues nothing, an approval derives the status
from the verdict it just overwrote.

So those entry points run inside ``primary_reads()``, and this router, listed first in
``DATABASE_ROUTERS``, sends every read made meanwhile (clip_search's rows, the shop's products,
whatever a registration's callables read) where that model's writes go. Elsewhere it has no
opinion and the shop's own routers decide. ``manage.py check`` warns (``clip_search.W004``)
when reads and writes go to different databases and this router is not first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import models, router

_primary: ContextVar[bool] = ContextVar("clip_search_primary_reads", default=False)


@contextmanager
def primary_reads() -> Iterator[None]:
    """Reads inside go to the write database of their model (with ``ReadYourWritesRouter``
    installed). Also a decorator: ``@primary_reads()``."""
    token = _primary.set(True)
    try:
        yield
    finally:
        _primary.reset(token)


class ReadYourWritesRouter:
    """Inside ``primary_reads()``: a read goes where the shop's routers send the model's writes."""

    def db_for_read(self, model: type[models.Model], **hints) -> str | None:
        if _primary.get():
            return router.db_for_write(model, **hints)
        return None
