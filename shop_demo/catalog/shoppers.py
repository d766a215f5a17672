"""Simulated shoppers for the demo shop: they search through the real API, look at the first page,
click what matches what they want (more often near the top), put some of it in the cart, and
search again after a page that showed them nothing. ``manage.py demo_shoppers`` runs them.

Why: the search log (``clip_search.searchlog``) is what the learning loop reads — ``clip_eval``
judges an encoder by logged clicks, ``clip_train --source clicks`` trains on (query, clicked
image) pairs — and a demo shop has no shoppers. These are the simplest ones that exercise what
matters there:

- hidden intents from the catalog's own vocabulary, phrased partly in words no product text
  uses (``shopper_words``), sometimes misspelt, so the log holds queries the catalog's words
  cannot answer and the clicks that say what they meant;
- clicks biased by position: result r is looked at with probability 1 / r ** 0.7 (a
  position-based model), and clicked if it is what the shopper wants (mostly) or not (rarely).
  Evaluation from clicks has to correct for this bias, as on a real shop;
- every search and every event goes through the API over HTTP (``HttpShop``) or through
  Django's test client in this process (``InProcessShop``): the rows are the ones the API writes;
- deterministic: shopper ``i`` draws everything from ``random.Random(f"{seed}:{i}")``, so the
  same seed on the same catalog gives the same queries and clicks.

    manage.py demo_shoppers --in-process --shoppers 500 --seed 1     # no server needed
    DEMO_API_THROTTLE=off manage.py runserver --insecure &            # or through a live server:
    manage.py demo_shoppers --url http://127.0.0.1:8000 --shoppers 500 --seed 1

Time: the API stamps its rows with the time they were written, and a simulation runs in
minutes. For a time-based hold-out the rows must span days, so ``backdate`` moves each row this
simulation wrote (and only those, by id) to its shopper's simulated time: sessions spread
evenly over the last ``days``. This rewrites ``created_at`` after the fact, for the simulation
only; nothing in clip_search lets a client choose the time of a search, on purpose.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from shop_demo.catalog.shopper_words import Intent, Phrase, Seen, phrase, refine


class Shop(Protocol):
    """The storefront API as one shopper reaches it."""

    def search(self, q: str, limit: int) -> dict[str, Any]:
        """GET /api/v1/search/: the first page's answer (raises ``ShopError`` on an error)."""

    def event(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /api/v1/events/ as a beacon sends it: (HTTP status, JSON answer)."""


class ShopError(RuntimeError):
    pass


def api_paths() -> dict[str, str]:
    """The API's paths in this project's URLconf (``/api/v1/search/`` in the demo)."""
    from django.urls import reverse

    return {name: reverse(f"clip_search_api:{name}", kwargs={"version": "v1"})
            for name in ("search", "events")}


def _beacon(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


BEACON_TYPE = "text/plain;charset=UTF-8"  # what navigator.sendBeacon(url, string) sends


@dataclass
class HttpShop:
    """The API of a running server (``manage.py runserver``, gunicorn), over HTTP.

    A throttled request (429) waits as long as ``Retry-After`` says, then goes again: one machine
    runs every shopper, so the demo's per-address rates apply to all of them together (the demo
    lifts them with ``DEMO_API_THROTTLE=off``)."""

    base_url: str
    user_agent: str
    paths: dict[str, str] = field(default_factory=api_paths)
    waited: float = 0.0  # seconds spent waiting on 429s
    timeout: float = 60.0

    def search(self, q: str, limit: int) -> dict[str, Any]:
        query = urllib.parse.urlencode({"q": q, "limit": limit})
        return self._call(urllib.request.Request(f"{self.base_url}{self.paths['search']}?{query}"))[1]

    def event(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{self.base_url}{self.paths['events']}", data=_beacon(body),
                                         headers={"Content-Type": BEACON_TYPE}, method="POST")
        return self._call(request, ok=(200, 400))

    def _call(self, request: urllib.request.Request, ok: tuple[int, ...] = (200,)) -> tuple[int, dict]:
        request.add_header("User-Agent", self.user_agent)
        request.add_header("Accept", "application/json")
        for _attempt in range(20):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                body = error.read()
                if error.code == 429:
                    wait = min(float(error.headers.get("Retry-After") or 1), 60.0)
                    self.waited += wait
                    time.sleep(wait)
                    continue
                if error.code in ok:
                    return error.code, json.loads(body)
                raise ShopError(f"{request.get_method()} {request.full_url}: HTTP {error.code} "
                                f"{body[:300]!r}") from error
        raise ShopError(f"{request.full_url}: still throttled after 20 waits")


@dataclass
class InProcessShop:
    """The API through Django's test client, in this process and on this database: no server
    needed. Each shopper comes from an address of their own (``remote_addr``), as on a real shop,
    so the per-address throttles apply per shopper; the log row is written when the response is
    closed, before ``search`` returns."""

    remote_addr: str
    user_agent: str
    paths: dict[str, str] = field(default_factory=api_paths)
    waited: float = 0.0

    def __post_init__(self) -> None:
        from django.test import Client

        self.client = Client(REMOTE_ADDR=self.remote_addr, HTTP_USER_AGENT=self.user_agent,
                             HTTP_ACCEPT="application/json")

    def search(self, q: str, limit: int) -> dict[str, Any]:
        response = self.client.get(self.paths["search"], {"q": q, "limit": limit})
        if response.status_code != 200:
            raise ShopError(f"search {q!r}: HTTP {response.status_code} {response.content[:300]!r}")
        return response.json()

    def event(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = self.client.post(self.paths["events"], _beacon(body), content_type=BEACON_TYPE)
        if response.status_code not in (200, 400):
            raise ShopError(f"event {body}: HTTP {response.status_code} {response.content[:300]!r}")
        return response.status_code, response.json()


def shopper_address(number: int) -> str:
    """A private address per shopper (10.x.y.z): distinct throttles and session hashes."""
    n = number + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def user_agent(number: int) -> str:
    return f"DemoShopper/1.0 (simulated shopper {number})"


# --------------------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class Behaviour:
    """The simulated shoppers' habits (the defaults are the demo's)."""

    own_words: float = 0.4  # chance a colour or a category is said in a shopper-only word
    misspell: float = 0.1  # chance a query has a typo in a catalog word
    brand: float = 0.2  # chance an intent names a brand
    page_size: int = 24  # the storefront's first page
    examine_exponent: float = 0.7  # result r is looked at with probability 1 / r ** exponent
    click: tuple[float, float, float] = (0.03, 0.35, 0.85)  # chance to click, by grade 0, 1, 2
    cart: tuple[float, float, float] = (0.0, 0.1, 0.45)  # chance a clicked result goes to the cart
    purchase: float = 0.35  # chance a result put in the cart is bought
    max_clicks: int = 3  # per page
    refine: float = 0.7  # chance to search again after a page with nothing wanted on it
    max_queries: int = 3  # per shopper


@dataclass
class Event:
    kind: str
    pk: str
    position: int
    grade: int
    at: datetime
    recorded: bool = False


@dataclass
class Search:
    """One search a shopper made: what they meant, typed and saw, what they did, and when (in
    simulated time)."""

    shopper: int
    intent: Intent
    phrase: Phrase
    at: datetime
    search_id: str | None = None
    count: int = 0
    shown_grades: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def clicks(self) -> list[Event]:
        return [event for event in self.events if event.kind == "click"]

    @property
    def wanted_click(self) -> bool:
        return any(event.grade > 0 for event in self.clicks)


def simulate(shop_for: Callable[[int], Shop], *, shoppers: int, seed: int, days: float = 14.0,
             behaviour: Behaviour = Behaviour(), now: datetime | None = None,
             log: Callable[[str], None] | None = None) -> list[Search]:
    """Run ``shoppers`` sessions, one after another, shopper ``i`` through ``shop_for(i)``; the
    searches they made, in order. Sessions are spread evenly over the ``days`` before ``now``
    (simulated time: see ``backdate``)."""
    now = now or _now()
    start = now - timedelta(days=days)
    searches: list[Search] = []
    for number in range(shoppers):
        rng = random.Random(f"{seed}:{number}")
        at = start + timedelta(days=days) * ((number + rng.random()) / shoppers)
        searches += session(shop_for(number), number, rng, at, behaviour)
        if log and (number + 1) % 50 == 0:
            log(f"  {number + 1}/{shoppers} shoppers, {len(searches)} searches")
    return searches


def session(shop: Shop, number: int, rng: random.Random, at: datetime, behaviour: Behaviour) -> list[Search]:
    """One shopper's visit: search, look, click; after a page with nothing they wanted on it,
    maybe search again in other words (``refine``)."""
    intent = Intent.draw(rng, behaviour.brand)
    words = phrase(intent, rng, own_words=behaviour.own_words, misspell=behaviour.misspell)
    searches = []
    for _query in range(behaviour.max_queries):
        search = Search(number, intent, words, at)
        answer = shop.search(words.text, behaviour.page_size)
        search.search_id, search.count = answer.get("search_id"), answer["count"]
        results = answer["results"]
        search.shown_grades = [Seen.of(r["title"], r["category"], r["brand"]).grade(intent) for r in results]
        look(shop, search, results, rng, behaviour)
        searches.append(search)
        if search.wanted_click or rng.random() >= behaviour.refine:
            break
        at = max([at, *(event.at for event in search.events)]) + timedelta(seconds=rng.uniform(20, 90))
        words = refine(intent, words, rng)
    return searches


def look(shop: Shop, search: Search, results: list[dict], rng: random.Random, behaviour: Behaviour) -> None:
    """Go down the page: look at result r with probability 1 / r ** exponent, click it by its
    grade, maybe put it in the cart and buy it; stop after a purchase or ``max_clicks``."""
    at = search.at
    for position, (result, grade) in enumerate(zip(results, search.shown_grades, strict=True), 1):
        if len(search.clicks) >= behaviour.max_clicks:
            break
        if rng.random() >= position ** -behaviour.examine_exponent:
            continue
        if rng.random() >= behaviour.click[grade]:
            continue
        pk = str(result["id"])
        at += timedelta(seconds=rng.uniform(3, 30))
        send(shop, search, Event("click", pk, position, grade, at))
        if rng.random() < behaviour.cart[grade]:
            at += timedelta(seconds=rng.uniform(5, 60))
            send(shop, search, Event("add_to_cart", pk, position, grade, at))
            if rng.random() < behaviour.purchase:
                at += timedelta(seconds=rng.uniform(30, 300))
                send(shop, search, Event("purchase", pk, position, grade, at))
                break


def send(shop: Shop, search: Search, event: Event) -> None:
    """Report ``event`` as the storefront does; not at all for a search the log did not keep. The
    log saves a search once its response has gone out, so over HTTP an event sent at once can
    arrive first (``unknown_search``): a shopper takes seconds, the simulation retries briefly."""
    search.events.append(event)
    if not search.search_id:
        return
    body = {"search_id": search.search_id, "kind": event.kind, "product_id": event.pk,
            "position": event.position}
    for delay in (0.05, 0.2, 0.5, 1.0, None):
        status, answer = shop.event(body)
        if status == 200:
            event.recorded = True
            return
        code = answer.get("error", {}).get("code")
        if code != "unknown_search" or delay is None:
            raise ShopError(f"event refused ({code}): {body}")
        time.sleep(delay)


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


def seen_products() -> list[tuple[str, Seen]]:
    """What a shopper sees of every product the storefront shows, by pk: for judging results
    (``shopper_words.evaluation_queries``) as the simulated shoppers judge them."""
    from shop_demo.catalog.models import Product

    products = Product.objects.filter(is_public=True).select_related("brand", "category").order_by("pk")
    return [(str(p.pk), Seen.of(p.title, p.category.name, p.brand.name)) for p in products]


# --------------------------------------------------------------------------- time and the report


def backdate(searches: list[Search], patience: float = 3.0) -> int:
    """Move the log rows of ``searches`` (by id) and their events to the simulated times; returns
    how many searches were found. For the simulation only (see the module docstring).

    A server's log writer gathers rows for a moment before it inserts them, so the last rows may
    land a moment after the simulation ends: this process's are written now, another server's
    are waited for up to ``patience`` seconds."""
    from clip_search import searchlog
    from clip_search.models import SearchEvent, SearchRecord

    searchlog.flush()
    by_id = {search.search_id: search for search in searches if search.search_id}
    deadline = time.monotonic() + patience
    while True:
        rows = list(SearchRecord.objects.filter(pk__in=list(by_id)).only("pk", "created_at"))
        if len(rows) == len(by_id) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for row in rows:
        row.created_at = by_id[str(row.pk)].at
    SearchRecord.objects.bulk_update(rows, ["created_at"], batch_size=500)
    events = []
    for row in rows:
        simulated = iter([event.at for event in by_id[str(row.pk)].events if event.recorded])
        for stored in SearchEvent.objects.filter(search_id=row.pk).order_by("created_at", "pk").only("pk"):
            stored.created_at = next(simulated, row.created_at)
            events.append(stored)
    SearchEvent.objects.bulk_update(events, ["created_at"], batch_size=500)
    return len(rows)


@dataclass
class Tally:
    searches: int = 0
    with_click: int = 0
    zero: int = 0
    clicks: int = 0
    wanted: int = 0  # clicks on a result of grade > 0
    carts: int = 0
    purchases: int = 0

    def add(self, search: Search) -> None:
        self.searches += 1
        self.with_click += bool(search.clicks)
        self.zero += search.count == 0
        self.clicks += len(search.clicks)
        self.wanted += sum(event.grade > 0 for event in search.clicks)
        self.carts += sum(event.kind == "add_to_cart" for event in search.events)
        self.purchases += sum(event.kind == "purchase" for event in search.events)

    def row(self, name: str) -> str:
        def share(part: int, whole: int) -> str:
            return f"{part / whole:.2f}" if whole else "–"

        return (f"| {name} | {self.searches} | {share(self.with_click, self.searches)} | "
                f"{share(self.zero, self.searches)} | {self.clicks} | {share(self.wanted, self.clicks)} | "
                f"{self.carts} | {self.purchases} |")


def summary(searches: list[Search]) -> str:
    """A Markdown summary: totals, then by intent kind and by wording. CTR is the share of searches
    with a click; "on intent" the share of clicks on a result of the wanted colour and category."""
    total, kinds, wordings = Tally(), {}, {}
    for search in searches:
        total.add(search)
        kinds.setdefault(search.intent.kind, Tally()).add(search)
        wordings.setdefault(search.phrase.wording, Tally()).add(search)
    header = ("| | searches | CTR | zero results | clicks | clicks on intent | add to cart | purchases |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [header, total.row("all")]
    lines += [tally.row(f"intent: {name}") for name, tally in sorted(kinds.items())]
    lines += [tally.row(f"words: {name}") for name, tally in sorted(wordings.items())]
    return "\n".join(lines)
