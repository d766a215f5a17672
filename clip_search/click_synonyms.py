"""Synonyms the search log suggests: words shoppers type that no product uses, each with the
catalog word the products they then clicked have in common.

"crimson" is in no product's text, so the text legs cannot find anything by it, and a query in
such words keeps only the pictures above the noise floor (``sql.fused``). Yet shoppers who type
it and click mostly click red products, far more often than the catalog's share of red ones:
``crimson => red`` is suggested. A fine-tuned model learns such words too (bench/learning_loop.py),
but a synonym also feeds the full-text and keyword legs, and staff can read and undo it.

Staff decide: the analytics page adds a suggestion as a one-way synonym set, and ``clip_synonyms
--suggest`` prints them in the synonyms file format (``--import`` them after reading). A word's
meaning is the shop's call, and a few sessions clicking at random must not teach search a word:
a suggestion needs clicks from ``min_sessions`` shoppers (5), a share of them (``min_share``) on
products with the catalog word, and that share ``min_lift`` times the word's share of the catalog.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.search import SearchVector
from django.db.models import CharField, F, Func, IntegerField

from clip_search import synonyms
from clip_search.analytics import Period
from clip_search.conf import clip_settings
from clip_search.lexicon import check_spelling
from clip_search.models import Embedding, EncoderModel, SearchEvent, SearchRecord, Term
from clip_search.query import ParsedQuery
from clip_search.query import Term as QueryTerm
from clip_search.sql.scope import Scope

# What a shopper does with a result that says it is what they meant.
WANTED = (SearchEvent.Kind.CLICK, SearchEvent.Kind.ADD_TO_CART, SearchEvent.Kind.PURCHASE)


@dataclass(frozen=True)
class Candidate:
    word: str  # what shoppers typed, in no product's text
    means: str  # the catalog word the products they clicked have in common
    searches: int  # searches with the word and a click
    sessions: int  # distinct shoppers among them
    share: float  # of those clicks, the share on products with ``means``
    lift: float  # ``share`` over the share of the catalog's products with ``means``

    @property
    def line(self) -> str:
        """The one-way set, as the synonyms file writes it."""
        return synonyms.format_line(synonyms.SynonymLine((self.word,), (self.means,)))


def candidates(period: Period, content_type: ContentType, encoder: EncoderModel, *, min_sessions: int = 5,
               min_share: float = 0.5, min_lift: float = 3.0, limit: int = 50) -> list[Candidate]:
    """Suggested one-way synonyms from the period's clicked searches, most searched first.
    Words a synonym set already has, and misspellings search corrects, are left out."""
    clicks = list(SearchEvent.objects.filter(
        kind__in=WANTED, search__in=period.searches().filter(
            content_type=content_type, kind=SearchRecord.Kind.TEXT),
    ).values_list("search_id", "search__query", "search__session", "object_pk"))
    if not clicks:
        return []
    unknown = _unknown_words({query for _id, query, _session, _pk in clicks}, content_type, encoder)
    if not unknown:
        return []
    evidence: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # word → (search, session, pk)
    for search_id, query, session, object_pk in clicks:
        for word in set(_words(query)) & unknown:
            evidence[word].append((str(search_id), session, object_pk))
    evidence = {word: rows for word, rows in evidence.items()
                if len({session for _s, session, _pk in rows}) >= min_sessions}
    if not evidence:
        return []
    words_of = _product_words(content_type, encoder, {pk for rows in evidence.values() for *_x, pk in rows})
    catalog = Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                       status=Embedding.Status.INDEXED).count() or 1
    # The catalog's words and how many products use each, stop words ("for", "by") left out.
    stems = Func(SearchVector("text", config=clip_settings.SEARCH["TEXT_SEARCH_CONFIG"]), function="length",
                 output_field=IntegerField())
    used_by = dict(Term.objects.filter(content_type=content_type).annotate(stems=stems).filter(stems__gt=0)
                   .values_list("text", "products"))
    found = []
    for word, rows in evidence.items():
        counts = Counter(catalog_word for *_x, pk in rows for catalog_word in words_of.get(pk, ()))
        # The word most of the clicked products have; of words equally shared, the one more
        # products use (a category's own noun rather than a feature some of them mention).
        scored = [(share, used_by[w], w, share * catalog / used_by[w]) for w, count in counts.items()
                  if used_by.get(w) and (share := count / len(rows)) >= min_share]
        scored = [row for row in scored if row[3] >= min_lift]
        if not scored:
            continue
        share, _products, means, lift = max(scored)
        found.append(Candidate(word=word, means=means, searches=len({s for s, _x, _y in rows}),
                               sessions=len({session for _s, session, _pk in rows}), share=share, lift=lift))
    return sorted(found, key=lambda c: (-c.searches, c.word))[:limit]


def by_model(period: Period) -> dict[str, list[Candidate]] | None:
    """``candidates`` for each registered model (by label), with the active encoder; None when
    no encoder is active (nothing is indexed yet)."""
    from clip_search.indexing import active_encoder
    from clip_search.registry import registry

    encoder = active_encoder()
    if encoder is None:
        return None
    return {registration.label: candidates(
        period, ContentType.objects.get_for_model(registration.model, for_concrete_model=False), encoder)
        for registration in registry}


def _words(query: str) -> list[str]:
    return re.findall(r"[^\W\d_]{3,}", query.lower())


def _unknown_words(queries: set[str], content_type: ContentType, encoder: EncoderModel) -> set[str]:
    """The words of ``queries`` search neither finds in the catalog nor corrects to a catalog
    word (``lexicon.check_spelling``, as a search would), nor has as a synonym."""
    words = sorted({word for query in queries for word in _words(query)} - set(synonyms.current()))
    if not words:
        return set()
    parsed = ParsedQuery(tuple((QueryTerm(word),) for word in words))
    return set(check_spelling(parsed, Scope(content_type.pk, encoder.pk), correct=True).unknown)


def _product_words(content_type: ContentType, encoder: EncoderModel, pks: set[str]) -> dict[str, set[str]]:
    """Each product's catalog words (the stored, unstemmed ``words`` of its row), its keyword
    tokens left out: a SKU's parts or a brand say which product, not what it is."""
    lexemes = Func(F("words"), function="tsvector_to_array", output_field=ArrayField(CharField()))
    rows = (Embedding.objects.filter(content_type=content_type, encoder=encoder, object_pk__in=pks)
            .annotate(lexemes=lexemes).values_list("object_pk", "lexemes", "keyword_tokens"))
    return {pk: {w for w in words or () if w.isalpha()} - {part for token in tokens or ()
                                                            for part in re.split(r"[\W_]+", token)}
            for pk, words, tokens in rows}
