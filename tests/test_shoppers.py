"""The demo's simulated shoppers (manage.py demo_shoppers): words no product text uses, the same
queries and clicks for the same seed, clicks that follow the hidden intent with a position bias,
and events in the search log tied to their searches, at simulated times."""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.postgres.search import SearchQuery
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from clip_search.models import Embedding, SearchEvent, SearchRecord
from shop_demo.catalog import shoppers
from shop_demo.catalog.generator import (
    CATEGORY_LABELS,
    COLOURS,
    SAFE_CATEGORIES,
    generate_catalog,
    vocabulary_texts,
)
from shop_demo.catalog.shopper_words import (
    SHOPPER_COLOURS,
    SHOPPER_NOUNS,
    SHOPPER_WORDS,
    Intent,
    Phrase,
    Seen,
    evaluation_queries,
    misspelt,
    phrase,
    shopper_words_in,
)
from tests.catalog import embedded_catalog

pytestmark = pytest.mark.usefixtures("empty_search_log")

DEMO_SEED = 42  # manage.py demo_catalog's


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """200 drawn products (the demo's seed), embedded, their lexicon built and the encoder
    calibrated as clip_reindex does."""
    with embedded_catalog(generate_catalog(200, seed=DEMO_SEED), tmp_path_factory.mktemp("media"),
                          django_db_blocker, calibrate=True) as rows:
        yield rows


@pytest.fixture
def shop_for(catalog, db):
    """Shopper i's API: Django's test client in this process, from an address of their own."""
    cache.clear()  # the throttles start afresh
    return lambda n: shoppers.InProcessShop(shoppers.shopper_address(n), shoppers.user_agent(n))


def trace(searches: list[shoppers.Search]) -> list[tuple]:
    return [(s.shopper, s.phrase.text, [(e.kind, e.pk, e.position) for e in s.events]) for s in searches]


# --------------------------------------------------------------------------- the words


def test_the_lexicon_covers_every_colour_and_category_with_words_of_its_own():
    assert set(SHOPPER_COLOURS) == set(COLOURS) and set(SHOPPER_NOUNS) == set(SAFE_CATEGORIES)
    every = [word for words in (*SHOPPER_COLOURS.values(), *SHOPPER_NOUNS.values()) for word in words]
    assert len(SHOPPER_WORDS) == len(every)  # no word means two things
    assert all(word.isalpha() and word.islower() for word in SHOPPER_WORDS)


def test_no_product_text_of_the_drawn_catalog_uses_a_shopper_word():
    """As whole words, in every catalog the generator draws (five seeds, 3,000 products each:
    every template, noun, adjective and feature sentence), and in its vocabularies."""
    texts = vocabulary_texts()
    for seed in (0, 7, DEMO_SEED, 5, 31):
        for spec in generate_catalog(3000, seed=seed):
            texts += [spec.title, spec.description, spec.brand, spec.sku, CATEGORY_LABELS[spec.category]]
    assert shopper_words_in(texts) == set()
    assert shopper_words_in(["A Crimson knapsack, navy-blue."]) == {"crimson", "knapsack", "navy"}  # it looks


def test_no_stored_document_matches_a_shopper_word_and_the_search_leaves_them_as_typed(shop_for):
    """In any form: the stored full-text documents (stems: "kicks" would match "kick") hold none of
    them, and the API calls each unknown without correcting it into a catalog word."""
    documents = Embedding.objects.filter(search_document__isnull=False)
    assert documents.count() >= 190
    stemmed = [word for word in SHOPPER_WORDS
               if documents.filter(search_document=SearchQuery(word, config="english")).exists()]
    assert stemmed == []
    shop = shop_for(0)
    for word in SHOPPER_WORDS:
        answer = shop.search(word, 24)
        assert answer["did_you_mean"] is None, (word, answer["did_you_mean"])
        assert answer["unknown_words"] == [word], (word, answer["unknown_words"])


def test_phrasing_mixes_the_catalogs_words_and_the_shoppers_and_misspells_catalog_words_only():
    rng = random.Random(1)
    intent = Intent("red", "backpack", "Nordvik")
    phrases = [phrase(intent, rng, own_words=0.5, misspell=0.3) for _ in range(300)]
    wordings = Counter(p.wording for p in phrases)
    assert set(wordings) == {"shopper words", "catalog words", "catalog words, misspelt"}
    for p in phrases:
        assert "nordvik" in p.text.lower() or p.misspelt  # the brand is said (perhaps mistyped)
        assert set(p.shopper_words) <= set(p.text.split())  # a shopper word is never mistyped
        assert all(SHOPPER_WORDS[word] in ("red", "backpack") for word in p.shopper_words)
    assert misspelt("red mug", rng) == "red mug"  # no word long enough to correct
    typo = misspelt("green umbrella", random.Random(3), keep={"green"})
    assert typo.startswith("green ") and typo != "green umbrella"


def test_evaluation_queries_judge_products_by_colour_and_category():
    products = [("1", Seen("red", "backpack", "Nordvik")), ("2", Seen("red", "backpack", "Halden")),
                ("3", Seen("blue", "mug", "Halden")), ("4", Seen(None, None, "Halden"))]
    judged = evaluation_queries(products)
    assert {"q": "crimson knapsack", "rel": {"1": 1, "2": 1}} in judged
    assert {"q": "navy tumbler", "rel": {"3": 1}} in judged
    assert len(judged) == 2 * 2 + 2 * 2  # two colour words × two nouns for each pair
    assert evaluation_queries(products, shopper_only=False) == [
        {"q": "blue mug", "rel": {"3": 1}}, {"q": "red backpack", "rel": {"1": 1, "2": 1}}]
    assert not shopper_words_in(query["q"] for query in evaluation_queries(products, shopper_only=False))


# --------------------------------------------------------------------------- behaviour


class FixedShop:
    """A page of ``n`` results that are all what every shopper wants (red mugs by anyone)."""

    def __init__(self, n: int = 24) -> None:
        self.results = [{"id": i, "title": f"Red mug {i}", "category": "Mugs", "brand": "Halden"}
                        for i in range(1, n + 1)]
        self.events: list[dict] = []

    def search(self, q: str, limit: int) -> dict:
        return {"search_id": "s", "count": len(self.results), "results": self.results[:limit]}

    def event(self, body: dict) -> tuple[int, dict]:
        self.events.append(body)
        return 200, {"recorded": True, "position": body["position"]}


def test_clicks_are_biased_by_position_as_the_model_says():
    """Every result wanted: what decides a click is whether the shopper looked, 1 / r ** 0.7."""
    behaviour = shoppers.Behaviour(max_clicks=24, cart=(0, 0, 0), click=(1, 1, 1))
    shop, clicks, trials = FixedShop(), Counter(), 4000
    for i in range(trials):
        search = shoppers.Search(0, Intent("red", "mug"), Phrase("red mug"), timezone.now())
        search.shown_grades = [2] * len(shop.results)
        shoppers.look(shop, search, shop.results, random.Random(i), behaviour)
        clicks.update(event.position for event in search.clicks)
    for rank in (1, 2, 5, 10, 24):
        assert clicks[rank] / trials == pytest.approx(rank ** -0.7, abs=0.03), rank


def test_a_shopper_without_a_search_id_sends_no_event():
    shop = FixedShop()
    shop.search = lambda q, limit: {"search_id": None, "count": 24, "results": shop.results}
    searches = shoppers.simulate(lambda number: shop, shoppers=20, seed=1)
    assert any(search.clicks for search in searches) and shop.events == []


# --------------------------------------------------------------------------- through the API


def test_the_same_seed_gives_the_same_queries_and_clicks(shop_for):
    first = shoppers.simulate(shop_for, shoppers=12, seed=3)
    again = shoppers.simulate(shop_for, shoppers=12, seed=3)
    assert trace(first) == trace(again)
    assert sum(len(s.clicks) for s in first) >= 3  # something to compare
    assert trace(shoppers.simulate(shop_for, shoppers=12, seed=4)) != trace(first)


def test_clicks_go_to_what_the_shopper_wants_more_often_than_chance(shop_for):
    searches = shoppers.simulate(shop_for, shoppers=60, seed=11)
    clicks = [event for search in searches for event in search.clicks]
    shown = [grade for search in searches for grade in search.shown_grades]
    on_intent_clicks = sum(event.grade > 0 for event in clicks) / len(clicks)
    on_intent_shown = sum(grade > 0 for grade in shown) / len(shown)  # a click at random
    assert len(clicks) >= 20
    assert on_intent_clicks >= 0.7, on_intent_clicks
    assert on_intent_clicks > 3 * on_intent_shown, (on_intent_clicks, on_intent_shown)
    # Shopper-only words are in the log, and some of those searches still got a wanted click.
    own = [search for search in searches if search.phrase.shopper_words]
    assert own and any(search.wanted_click for search in own)


def test_the_events_land_in_the_log_tied_to_their_searches_at_simulated_times(shop_for):
    now = timezone.now()
    searches = shoppers.simulate(shop_for, shoppers=30, seed=5, days=14, now=now)
    assert shoppers.backdate(searches) == len(searches) == SearchRecord.objects.count()
    events = 0
    for search in searches:
        row = SearchRecord.objects.get(pk=search.search_id)
        assert (row.query, row.hits, row.created_at) == (search.phrase.text, search.count, search.at)
        stored = list(SearchEvent.objects.filter(search=row).order_by("created_at", "pk")
                      .values_list("kind", "object_pk", "position", "created_at"))
        assert stored == [(e.kind, e.pk, e.position, e.at) for e in search.events]
        assert all(row.results[position - 1] == pk for _kind, pk, position, _at in stored)
        events += len(stored)
    assert events >= 10 and SearchEvent.objects.count() == events
    # Spread over the two weeks, sessions in order, one session hash per shopper.
    times = sorted(SearchRecord.objects.values_list("created_at", flat=True))
    assert now - timedelta(days=14) <= times[0] < now - timedelta(days=10)
    assert now - timedelta(days=3) < times[-1] <= now
    sessions = {str(pk): session for pk, session in SearchRecord.objects.values_list("pk", "session")}
    by_shopper = {search.shopper: sessions[search.search_id] for search in searches}
    assert len(set(by_shopper.values())) == len(by_shopper)


def test_judged_queries_from_the_shops_rows_name_the_right_products(catalog, db):
    truth = {str(product.pk): spec for spec, product in catalog}
    judged = evaluation_queries(shoppers.seen_products())
    assert len(judged) >= 100 and not any(word in CATEGORY_LABELS for q in judged for word in q["q"].split())
    for query in judged:
        colour, noun = query["q"].split()
        for pk in query["rel"]:
            assert (truth[pk].colour, truth[pk].category) == (SHOPPER_WORDS[colour], SHOPPER_WORDS[noun])


def test_the_command_runs_shoppers_in_process_and_prints_a_summary(catalog, db):
    cache.clear()
    out = io.StringIO()
    call_command("demo_shoppers", "--in-process", "--shoppers", "8", "--seed", "2", stdout=out)
    text = out.getvalue()
    searches = SearchRecord.objects.count()
    assert "8 shoppers (seed 2) over 14 days" in text
    assert f"| all | {searches} |" in text and "| words: shopper words |" in text
    assert "| intent: colour + category |" in text
    oldest = SearchRecord.objects.order_by("created_at").first().created_at
    assert oldest < timezone.now() - timedelta(days=1)  # backdated


# --------------------------------------------------------------------------- synonyms from clicks


def test_the_log_suggests_what_shopper_only_words_mean(shop_for, capsys):
    from django.contrib.contenttypes.models import ContentType

    from clip_search import click_synonyms, searchlog
    from clip_search.analytics import Period
    from clip_search.models import EncoderModel
    from shop_demo.catalog.generator import nouns
    from shop_demo.catalog.models import Product

    shoppers.simulate(shop_for, shoppers=400, seed=21, now=timezone.now())
    searchlog.flush()
    found = click_synonyms.candidates(Period.last(1), ContentType.objects.get_for_model(Product),
                                      EncoderModel.objects.get(is_active=True))

    def right(candidate) -> bool:
        meaning = SHOPPER_WORDS.get(candidate.word)
        if meaning in COLOURS:
            return candidate.means == meaning
        return meaning is not None and (candidate.means.removesuffix("s") in (meaning, *nouns(meaning))
                                        or candidate.means in CATEGORY_LABELS[meaning].lower().split())

    with capsys.disabled():
        print("\nsuggested from clicks:", ", ".join(f"{c.line} ({c.sessions} shoppers, {c.share:.0%})"
                                                    for c in found))
    assert len(found) >= 5, found
    assert sum(map(right, found)) >= 0.8 * len(found), found
    assert all(c.sessions >= 5 and c.share >= 0.5 and c.lift >= 3 for c in found)
    out = io.StringIO()
    call_command("clip_synonyms", "--suggest", "--days", "1", stdout=out)
    assert found[0].line in out.getvalue()

    # Staff add one from the analytics page: a one-way set, no longer suggested.
    from django.contrib.auth import get_user_model
    from django.test import Client

    from clip_search.models import Synonym

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("synonyms", "s@example.com", "x"))
    page = client.get("/admin/clip_search/searchrecord/analytics/").content.decode()
    assert f"<td>{found[0].word}</td><td>{found[0].means}</td>" in page
    response = client.post("/admin/clip_search/searchrecord/analytics/synonym/",
                           {"word": found[0].word, "means": found[0].means})
    assert response.status_code == 302
    added = Synonym.objects.get()
    assert (added.terms, added.synonyms) == ([found[0].word], [found[0].means])
    again = client.get("/admin/clip_search/searchrecord/analytics/").content.decode()
    assert "Added the synonym set" in again and f"<td>{found[0].word}</td>" not in again
