"""The search log: what shoppers searched, what they were shown, and what they did with it.

Every storefront API search writes a ``SearchRecord`` (``SEARCH_LOG["ENABLED"]``) whose id the
response carries as ``search_id``; a shop's own ``search()`` calls are logged when it passes
their results to ``record``. Events (a click, an add to cart, a purchase) name that id and the
result's position (``add_event``: the API's ``POST /api/v1/events/``).

Writing it must not slow search down: the API builds the row while it answers and hands it to
a writer thread that inserts rows in batches (``Writer``); the request never waits for the
database. No personal data is kept: the
shopper is a salted hash of the session key (or, without a session, of the address and user
agent of that day, so it cannot link days), and rows older than ``RETENTION_DAYS`` are purged.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from django import db
from django.contrib.contenttypes.models import ContentType
from django.db import close_old_connections, models
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import salted_hmac

from clip_search.conf import clip_settings
from clip_search.models import SearchEvent, SearchRecord

logger = logging.getLogger(__name__)

LEG_LETTERS = {"vector": "v", "fulltext": "f", "keyword": "k"}


class EventRefused(ValueError):
    """An event that cannot be tied to its search: ``code`` says why (for the API)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def enabled() -> bool:
    return clip_settings.SEARCH_LOG["ENABLED"]


def session_hash(request: HttpRequest | None) -> str:
    """Who searched, as no one can read it back: a keyed hash of the session key, or without a
    session of the address and user agent together with the day (it cannot link days)."""
    if request is None:
        return ""
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if not key:
        key = "|".join((request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_USER_AGENT", ""),
                        timezone.now().date().isoformat()))
    return salted_hmac("clip_search.searchlog.session", key).hexdigest()[:32]


def build(results: models.QuerySet, *, request: HttpRequest | None = None, kind: str = SearchRecord.Kind.TEXT,
          filters: dict[str, Any] | None = None, shown: list[Any] | None = None,
          started: float | None = None) -> SearchRecord:
    """The log row of a search (not saved). ``results`` as ``search()`` returned them; ``shown``:
    their pks in the order the shopper saw them when that is not the search's own (a sort, a
    facet); ``started``, a ``time.perf_counter()`` reading, gives the latency."""
    info = results.search_info
    kept = clip_settings.SEARCH_LOG["RESULTS_KEPT"]
    ranked = [info.hits[str(pk)] for pk in (list(info.hits) if shown is None else shown)[:kept]]
    return SearchRecord(
        id=uuid.uuid4(), created_at=timezone.now(),
        content_type=ContentType.objects.get_for_model(results.model, for_concrete_model=False),
        encoder_id=info.encoder_id, kind=kind, query=info.query[:512],
        corrected_query=(info.corrected_query or "")[:512], filters=filters or {}, legs=list(info.legs),
        degraded=info.is_degraded, hits=len(info.hits), results=[hit.object_pk for hit in ranked],
        found_by=[found_by(hit) for hit in ranked],
        latency_ms=0.0 if started is None else (time.perf_counter() - started) * 1000,
        session=session_hash(request))


def found_by(hit: Any) -> str:
    """Which legs found a hit: "v", "f", "k" in that order ("vf": the vector and full-text legs)."""
    ranks = {"vector": hit.vector_rank, "fulltext": hit.fulltext_rank, "keyword": hit.keyword_rank}
    return "".join(LEG_LETTERS[leg] for leg, rank in ranks.items() if rank is not None)


class Writer:
    """Rows handed over by requests, written by one thread per process in batches.

    Saving a row in the request (even after its response went out) makes the next request on
    that keep-alive connection wait for the INSERT and its commit: measured under gunicorn,
    +2.5 to +9.5 ms on a search sent right after another. Here a request only appends to a list;
    the thread inserts what gathered every ``FLUSH_SECONDS`` (or at ``BATCH`` rows) in one
    statement, and at exit. A row lost to a crash is an analytics row, never a product's.
    """

    FLUSH_SECONDS = 0.2
    BATCH = 200

    def __init__(self) -> None:
        self._rows: list[SearchRecord] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one batch at a time: flush() returns once written
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row: SearchRecord) -> None:
        with self._lock:
            self._rows.append(row)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clip_search-searchlog", daemon=True)
                self._thread.start()
            if len(self._rows) >= self.BATCH:
                self._wake.set()

    def pending(self, search_id: uuid.UUID | str) -> bool:
        with self._lock:
            return any(str(row.id) == str(search_id) for row in self._rows)

    def flush(self) -> int:
        """Insert what is waiting, now (tests, an event naming a row not yet written, exit).
        A batch the thread is writing meanwhile is written when this returns, too."""
        with self._writing:
            with self._lock:
                rows, self._rows = self._rows, []
            if rows:
                try:
                    SearchRecord.objects.bulk_create(rows)
                except db.Error:  # down, restarting, gone (interface errors too): lost, not the shop
                    logger.exception("clip_search: %d search log rows could not be written", len(rows))
            return len(rows)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the thread must outlive anything one batch meets
                logger.exception("clip_search: the search log writer failed a batch")
            # The thread's own connection, as a request's is at its end: closed when too old or
            # broken (a database restart), so the next batch reconnects.
            close_old_connections()


writer = Writer()
atexit.register(writer.flush)


def save_later(row: SearchRecord) -> None:
    """Hand ``row`` to the process's writer: the shopper never waits for the log."""
    writer.add(row)


def flush() -> int:
    return writer.flush()


def record(results: models.QuerySet, request: HttpRequest | None = None,
           **options: Any) -> uuid.UUID | None:
    """Log a search a shop ran with ``search()`` itself, now; returns its id (for events), or
    None when the log is off. ``options``: ``kind``, ``filters``, ``started`` (see ``build``)."""
    if not enabled():
        return None
    row = build(results, request=request, **options)
    row.save(force_insert=True)
    return row.id


def record_later(results: models.QuerySet, request: HttpRequest | None = None,
                 **options: Any) -> uuid.UUID | None:
    """``record()`` written by the writer thread (a page never waits for the INSERT): for the
    id to name in events, which wait for the row when it is not written yet."""
    if not enabled():
        return None
    row = build(results, request=request, **options)
    save_later(row)
    return row.id


def add_event(search_id: uuid.UUID | str, kind: str, object_pk: str,
              position: int | None = None) -> SearchEvent:
    """Record what a shopper did with a result. The search must exist and have shown that
    product; ``position`` (1-based) defaults to where it showed it, and must agree with it."""
    search = _search(search_id)
    if search is None:
        raise EventRefused("unknown_search", "No such search (or it is older than the log keeps).")
    object_pk = str(object_pk)
    if object_pk not in search.results:
        # Past the results the log keeps (RESULTS_KEPT), a position cannot be checked: taken as told.
        kept = clip_settings.SEARCH_LOG["RESULTS_KEPT"]
        if position is not None and position > len(search.results) == kept:
            return SearchEvent.objects.create(search=search, kind=kind, object_pk=object_pk,
                                              position=position, created_at=timezone.now())
        raise EventRefused("not_in_results", "That product was not among the results of that search.")
    shown = search.results.index(object_pk) + 1
    if position is not None and position != shown:
        raise EventRefused("wrong_position",
                           f"That product was result {shown} of that search, not {position}.")
    return SearchEvent.objects.create(search=search, kind=kind, object_pk=object_pk, position=shown,
                                      created_at=timezone.now())


def _search(search_id: uuid.UUID | str, *, wait: float = 2.0) -> SearchRecord | None:
    """The search an event names. Its row may not be written yet (the writer gathers rows for a
    moment, maybe in another process): this process's waiting rows are written first, then the
    row is looked for again for up to ``wait`` seconds."""
    if writer.pending(search_id):
        writer.flush()
    deadline = time.monotonic() + wait
    while True:
        search = SearchRecord.objects.filter(pk=search_id).only("results").first()
        if search is not None or time.monotonic() >= deadline:
            return search
        time.sleep(Writer.FLUSH_SECONDS / 2)


def purge(days: int | None = None) -> int:
    """Delete searches (and their events) older than ``days`` (``RETENTION_DAYS``); returns how
    many searches went."""
    days = clip_settings.SEARCH_LOG["RETENTION_DAYS"] if days is None else days
    old = SearchRecord.objects.filter(created_at__lt=timezone.now() - timedelta(days=days))
    _deleted, by_model = old.delete()
    return by_model.get(SearchRecord._meta.label, 0)


def state() -> str:
    """What the log holds, in a few characters: searches and events, and the latest of each."""
    from django.db.models import Count, Max

    searches = SearchRecord.objects.aggregate(n=Count("pk"), last=Max("created_at"))
    events = SearchEvent.objects.aggregate(n=Count("pk"), last=Max("created_at"))
    return f"{searches['n']}:{searches['last']}:{events['n']}:{events['last']}"
