"""The catalog's own words: spelling correction against them, and search-as-you-type.

Typo tolerance corrects a misspelt word against the vocabulary of the catalog itself, never
against a dictionary, and never changes a word the catalog uses: a word is corrected only when
no storefront product holds it (as written, or in another form of its stem: "mugs" where the
titles say "mug") and a catalog word is within reach, 1 edit from ``TYPOS["ONE_TYPO"]`` letters
and 2 from ``TYPOS["TWO_TYPOS"]`` (5 and 9, as Meilisearch; a swap of two letters is one edit).

The vocabulary (``Term``) and the suggestions (``Suggestion``: titles, brands, categories, as
the registration's ``suggest=`` names them) are aggregates over the storefront's rows, built by
``refresh``: the sweep does it once the index changed, and ``clip_reindex`` at its end. Each row
keeps its words and suggestions as the writer stored them (``Embedding.words``/``suggestions``),
so a build never reads the shop's tables (but for rows written before these columns existed).
What a shopper is offered is checked against the live index: a suggestion whose products were
all quarantined since the build is not shown.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta

from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.search import SearchVector
from django.db import transaction
from django.db.models import Func, Value
from django.utils import timezone

from clip_search.conf import clip_settings
from clip_search.models import Embedding, EncoderModel, Lexicon
from clip_search.query import ParsedQuery, Term, is_identifier
from clip_search.registry import Registration
from clip_search.sql import Scope
from clip_search.sql import lexicon as lexicon_sql

logger = logging.getLogger(__name__)

STOREFRONT = [Embedding.Status.INDEXED, Embedding.Status.NO_IMAGE]
# Catalog words looked at per misspelt word: the nearest by trigram distance, then ranked by
# edit distance here.
CANDIDATES = 12


# --------------------------------------------------------------------------- what a row stores


def words_expression(text: str) -> Func:
    """The text's words as written (``simple``: not stemmed, no stop words dropped), without
    positions: the vocabulary needs which words, not where."""
    return Func(SearchVector(Value(text), config="simple"), function="strip")


# --------------------------------------------------------------------------- building


@dataclass
class Built:
    words: int
    suggestions: int
    filled: int  # rows written before words were stored, read from the shop's tables now


def refresh(registration: Registration, encoder: EncoderModel | None = None, *,
            using: str = "default") -> Built:
    """Build the model's vocabulary and suggestions from its storefront rows now."""
    encoder = encoder or EncoderModel.objects.using(using).filter(is_active=True).first()
    content_type = ContentType.objects.db_manager(using).get_for_model(registration.model,
                                                                       for_concrete_model=False)
    if encoder is None:
        return Built(0, 0, 0)
    filled = _fill_missing(registration, content_type, encoder, using)
    scope = storefront_scope(registration, content_type.pk, encoder.pk)
    with transaction.atomic(using=using):
        words, suggestions = lexicon_sql.rebuild(scope, [str(s) for s in STOREFRONT], using=using)
        Lexicon.objects.using(using).update_or_create(
            content_type=content_type,
            defaults={"built_at": timezone.now(), "words": words, "suggestions": suggestions})
    logger.info("clip_search lexicon of %s: %d terms, %d suggestions (%d rows filled)",
                registration.label, words, suggestions, filled)
    return Built(words, suggestions, filled)


def refresh_if_stale(registration: Registration, encoder: EncoderModel) -> Built | None:
    """``refresh`` when a row changed since the last build, at most every
    ``LEXICON["REFRESH_AFTER"]`` seconds (the sweep calls this)."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    built = Lexicon.objects.filter(content_type=content_type).first()
    if built is not None:
        if timezone.now() - built.built_at < timedelta(seconds=clip_settings.LEXICON["REFRESH_AFTER"]):
            return None
        rows = Embedding.objects.filter(content_type=content_type, encoder=encoder)
        if not rows.filter(updated_at__gt=built.built_at).exists():
            return None
    return refresh(registration, encoder)


def storefront_scope(registration: Registration, content_type_id: int, encoder_id: int) -> Scope:
    """The rows whose words a shopper may see: the registration's queryset (its public rule)."""
    from clip_search.search import scope_for

    return scope_for(registration.get_queryset(), content_type_id, encoder_id)


def _fill_missing(registration: Registration, content_type: ContentType, encoder: EncoderModel,
                  using: str, batch_size: int = 500) -> int:
    """Rows written before words and suggestions were stored get them from the shop's objects."""
    from clip_search.indexing import document_text

    filled, last = 0, 0
    while True:
        rows = list(Embedding.objects.using(using).filter(
            content_type=content_type, encoder=encoder, words__isnull=True, pk__gt=last,
        ).order_by("pk").values_list("pk", "object_pk")[:batch_size])
        if not rows:
            return filled
        last = rows[-1][0]
        objects = {str(obj.pk): obj for obj in registration.fetch([pk for _, pk in rows])}
        values = [(row_id, document_text(registration, objects[pk]),
                   json.dumps(registration.suggestion_values(objects[pk])))
                  for row_id, pk in rows if pk in objects]
        lexicon_sql.fill_words(values, using=using)
        filled += len(values)


# --------------------------------------------------------------------------- spelling


@dataclass
class Spelling:
    """A query's words against the catalog's: corrections, and words it does not know at all."""

    corrections: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def allowed_edits(word: str) -> int:
    typos = clip_settings.SEARCH["TYPOS"]
    if len(word) >= typos["TWO_TYPOS"]:
        return 2
    return 1 if len(word) >= typos["ONE_TYPO"] else 0


def check_spelling(parsed: ParsedQuery, scope: Scope, *, correct: bool, protected: set[str] = frozenset(),
                   using: str = "default") -> Spelling:
    """What the catalog's vocabulary says of ``parsed`` (see the module docstring). ``protected``
    words (a synonym's) are known whatever the catalog holds."""
    words = [w for w in dict.fromkeys(parsed.words())
             if any(c.isalpha() for c in w) and not is_identifier(w) and w not in protected]
    correctable = [w for w in words if correct and allowed_edits(w) and w.isalpha()]
    if not words:
        return Spelling()
    facts = lexicon_sql.analyse(scope.content_type_id, scope.encoder_id,
                                clip_settings.SEARCH["TEXT_SEARCH_CONFIG"], words, correctable, CANDIDATES,
                                using=using)
    spelling = Spelling()
    for word in words:
        if word in facts.known:
            continue
        best = _nearest(word, facts.candidates.get(word, [])) if word in correctable else None
        if best:
            spelling.corrections[word] = best
        else:
            spelling.unknown.append(word)
    return spelling


def _nearest(word: str, candidates: list[tuple[str, int]]) -> str | None:
    """The candidate fewest edits away (within ``allowed_edits``), then the most used."""
    limit = allowed_edits(word)
    scored = [(edits, -products, text) for text, products in candidates
              if (edits := edit_distance(word, text, limit)) <= limit]
    return min(scored)[2] if scored else None


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insertions, deletions, substitutions and swaps of two
    adjacent letters each count one); ``limit + 1`` as soon as it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


# --------------------------------------------------------------------------- suggestions


@dataclass(frozen=True)
class Completion:
    kind: str
    text: str
    products: int


def suggest(registration: Registration, text: str, *, limit: int | None = None,
            using: str = "default") -> list[Completion]:
    """Completions of what a shopper is typing: titles, brands and categories whose words start
    with it ("red ba" → "Red backpack"), most products first; when none does, those of its
    spelling corrected against the catalog ("bakcpack" → "backpack"), then those of the catalog
    words nearest its last word ("gren" → "green"). With no text, the kinds in
    ``SUGGEST["EMPTY_KINDS"]`` with most products (what to offer in an empty search box)."""
    options = clip_settings.SUGGEST
    limit = min(limit or options["LIMIT"], options["MAX_LIMIT"])
    content_type = ContentType.objects.db_manager(using).get_for_model(registration.model,
                                                                       for_concrete_model=False)
    statuses = [str(s) for s in STOREFRONT]
    words = _words(text)[:10]
    if not words:
        rows = lexicon_sql.top_suggestions(content_type.pk, statuses, list(options["EMPTY_KINDS"]), limit,
                                           using=using)
        return [Completion(*row) for row in rows]
    def completing(words: list[str], last: list[str] | None = None) -> list:
        query = _prefix_query(words, last)
        return lexicon_sql.suggest(content_type.pk, query, statuses, limit, using=using)

    rows = completing(words)
    if not rows:
        corrected = _corrected(words, content_type.pk, using)
        rows = completing(corrected) if corrected != words else []
    if not rows:  # the last word is a typo still being typed ("gren"): its nearest catalog words
        near = lexicon_sql.nearest_words(content_type.pk, words[-1], NEAREST_WORDS, using=using)
        rows = completing(words, near) if near else []
    return [Completion(*row) for row in rows]


# Catalog words tried in place of a last word that completes nothing.
NEAREST_WORDS = 3


def _prefix_query(words: list[str], last: list[str] | None = None) -> str:
    """``to_tsquery('simple')`` text: every word whole but the last, a prefix (or any of ``last``'s
    words, each a prefix)."""
    ending = "(" + " | ".join(f"'{w}':*" for w in last) + ")" if last else f"'{words[-1]}':*"
    return " & ".join([*(f"'{w}'" for w in words[:-1]), ending])


def _corrected(words: list[str], content_type_id: int, using: str) -> list[str]:
    encoder = EncoderModel.objects.using(using).filter(is_active=True).first()
    if encoder is None:
        return words
    parsed = ParsedQuery(tuple((Term(word),) for word in words))
    spelling = check_spelling(parsed, Scope(content_type_id, encoder.pk), correct=True, using=using)
    return [spelling.corrections.get(word, word) for word in words]


def _words(text: str) -> list[str]:
    """The words of ``text`` as ``to_tsvector('simple')`` splits them, safe to quote in a
    tsquery (letters and digits only)."""
    return re.findall(r"[^\W_]+", text.lower()[:200])

