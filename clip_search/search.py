"""Hybrid search: a CLIP vector leg, a full-text leg and a keyword leg, fused by reciprocal rank.

``search(Product.objects.filter(in_stock=True), text="red mug")`` returns that queryset —
the shop's own model, filters and permissions — narrowed to the hits, ordered by fused score
and annotated with ``search_score``, ``search_rank`` and each leg's rank. The legs and the
fusion run in one statement (``sql.fused_search``); the shop's filters are inside it, so a
selective filter still gets its full depth of vector hits (pgvector iterative scan).

Before it, the words are read against the catalog (``lexicon``: a misspelt word is corrected
to the catalog's own, and the search says so in ``corrected_query``) and the shop's synonyms
(``synonyms``). The hits are only real ones: a text query's vector hits must be near its best
one, and near enough in absolute terms when no word matched any product (``calibration``), so
a query that means nothing here finds nothing.

Search degrades rather than fails: when the text encoder cannot be loaded the keyword legs
answer alone and ``results.search_info.degraded`` says why.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np
from django.contrib.contenttypes.models import ContentType
from django.db import connections, models, transaction
from django.db.models import BigIntegerField, BooleanField, FloatField
from django.utils.translation import gettext_lazy as _

from clip_search import lexicon, sql, synonyms
from clip_search.calibration import relevance
from clip_search.conf import clip_settings
from clip_search.expressions import KeyIn, ValueAt
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, integer_pk
from clip_search.query import KeywordQuery, ParsedQuery, keyword_query, parse, with_synonyms

logger = logging.getLogger(__name__)

LEGS = ("vector", "fulltext", "keyword")
# An exact keyword (SKU) match outranks any fused score: three legs at rank 1 sum to ~0.05.
EXACT_BOOST = 1.0
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class SearchError(ValueError):
    """The query itself cannot be answered (for example: ``like`` has no embedding yet)."""


@dataclass
class SearchInfo:
    """What a search did: which legs ran, which could not and why, and each hit's evidence."""

    query: str = ""
    legs: list[str] = field(default_factory=list)
    degraded: dict[str, str] = field(default_factory=dict)
    truncated: bool = False
    hits: dict[str, sql.FusedHit] = field(default_factory=dict)
    # The query as searched when misspelt words were corrected ("umbrela" → "umbrella"), else None.
    corrected_query: str | None = None
    # Words no product uses, in any form, and no correction reaches.
    unknown_words: list[str] = field(default_factory=list)
    # A leg kept its full depth: more products may match than the hits (refine the query).
    capped: bool = False
    # No product has every word: products with some of them are ranked instead.
    relaxed: bool = False
    # The full-text terms as searched (corrections and synonyms included): what highlighting marks.
    terms: ParsedQuery = field(default_factory=lambda: ParsedQuery(()))
    encoder_id: int | None = None  # the encoder that answered

    @property
    def is_degraded(self) -> bool:
        return bool(self.degraded)

    def explain(self, obj: models.Model) -> dict[str, Any] | None:
        """Why ``obj`` is in the results: each leg's rank and raw measure, and the fused score."""
        hit = self.hits.get(str(obj.pk))
        if hit is None:
            return None
        return {
            "score": hit.score,
            "vector": None if hit.vector_rank is None else {
                "rank": hit.vector_rank, "cosine_distance": hit.vector_distance},
            "fulltext": None if hit.fulltext_rank is None else {
                "rank": hit.fulltext_rank, "ts_rank": hit.fulltext_score},
            "keyword": None if hit.keyword_rank is None else {
                "rank": hit.keyword_rank, "exact": hit.keyword_exact, "named": hit.keyword_named,
                "similarity": hit.keyword_similarity},
        }


class SearchResultsMixin:
    """Keeps ``search_info`` on every clone, so ``.filter()`` or pagination do not drop it."""

    search_info: SearchInfo

    def _clone(self):
        clone = super()._clone()
        clone.search_info = self.search_info
        return clone


_result_classes: dict[type, type] = {}


def _with_info(queryset: models.QuerySet, info: SearchInfo) -> models.QuerySet:
    base = type(queryset)
    if base not in _result_classes:
        _result_classes[base] = type(f"Search{base.__name__}", (SearchResultsMixin, base), {})
    queryset.__class__ = _result_classes[base]
    queryset.search_info = info
    return queryset


def clean_query(text: str | None) -> tuple[str, bool]:
    """Normalised, control-free query text and whether it was cut to ``MAX_QUERY_LENGTH``."""
    text = unicodedata.normalize("NFKC", text or "")
    text = " ".join(_CONTROL.sub(" ", text).split())
    limit = clip_settings.SEARCH["MAX_QUERY_LENGTH"]
    return (text[:limit].rstrip(), True) if len(text) > limit else (text, False)


@dataclass
class TextQuery:
    """A text query read against the catalog: its terms with their corrections and synonyms,
    the query as searched, the keyword leg's values and what the spelling check found."""

    terms: ParsedQuery
    searched: str
    keywords: KeywordQuery
    spelling: lexicon.Spelling


def analyse(text: str, scope: sql.Scope, *, correct: bool = True, using: str = "default") -> TextQuery:
    """Parse ``text``, correct its misspelt words against the catalog (``correct``), add the
    shop's synonyms. One round trip to the catalog's vocabulary; synonyms come from the cache."""
    parsed = parse(text)
    synonym_map = synonyms.current(using)
    correct = correct and clip_settings.SEARCH["TYPOS"]["ENABLED"]
    protected = {word for term in synonym_map for word in term.split()}  # a synonym's words are the shop's
    spelling = lexicon.check_spelling(parsed, scope, correct=correct, protected=protected, using=using)
    fixes = {term: replace(term, corrected=spelling.corrections[term.text]) for term in parsed.terms
             if term.text in spelling.corrections and not term.phrase and not term.negated}
    parsed = with_synonyms(parsed.replace_terms(fixes), synonym_map)
    searched = parsed.text() if fixes else text
    return TextQuery(parsed, searched, keyword_query(searched, synonym_map), spelling)


def scope_for(queryset: models.QuerySet, content_type_id: int, encoder_id: int,
              exclude_pk: str | None = None) -> sql.Scope:
    """The rows of clip_search's tables that ``queryset`` (the shop's filters) lets a statement read."""
    model = queryset.model
    return sql.Scope(content_type_id=content_type_id, encoder_id=encoder_id, base=_base(queryset),
                     integer_pk=integer_pk(model), exclude_pk=exclude_pk,
                     pk_type=model._meta.pk.cast_db_type(connections[queryset.db]))


def search(
    queryset: models.QuerySet,
    *,
    text: str | None = None,
    image: bytes | IO[bytes] | None = None,
    like: models.Model | Any = None,
    limit: int | None = None,
    depth: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
    include_quarantined: bool = False,
    encoder: EncoderModel | None = None,
    correct: bool = True,
) -> models.QuerySet:
    """The hits among ``queryset``, best first. See the module docstring.

    ``text`` and ``image`` may be given together (their vectors are averaged); ``like`` is a
    product (or its pk) whose neighbours are wanted, itself excluded. ``include_quarantined``
    lets staff find flagged, rejected and not yet embedded products too. ``correct=False``
    searches the words as typed (no spelling correction).
    """
    options = clip_settings.SEARCH
    info = SearchInfo()
    info.query, info.truncated = clean_query(text)
    using = queryset.db
    encoder = encoder or EncoderModel.objects.using(using).filter(is_active=True).first()
    if encoder is None:
        info.degraded = {leg: str(_("Nothing is indexed yet.")) for leg in LEGS}
        return _with_info(queryset.none(), info)
    info.encoder_id = encoder.pk
    model = queryset.model
    weights = {**options["WEIGHTS"], **(weights or {})}
    depth = {**options["DEPTH"], **(depth or {})}
    exclude_pk = None
    vectors = []
    if like is not None:
        like_pk = str(getattr(like, "pk", like))
        vectors.append(_stored_vector(model, like_pk, encoder, include_quarantined))
        exclude_pk, info.query = like_pk, ""
    content_type = ContentType.objects.db_manager(using).get_for_model(model, for_concrete_model=False)
    scope = scope_for(queryset, content_type.pk, encoder.pk, exclude_pk)
    words = analyse(info.query, scope, correct=correct, using=using) if info.query else None
    if words is not None:
        info.terms = words.terms
        info.corrected_query = words.searched if words.searched != info.query else None
    info.unknown_words = words.spelling.unknown if words else []
    if image is not None:
        vectors.append(_image_vector(image, encoder))
    text_only = image is None and like is None
    if words is not None and weights["vector"] > 0 and like is None:
        try:
            vectors.append(_text_vector(words.searched, encoder))
        except Exception as error:  # the encoder is unavailable: keyword legs answer alone
            logger.warning("clip_search: vector leg unavailable, keyword search only: %s", error)
            # The reason shown is a fixed sentence: the error itself names paths of the server.
            info.degraded["vector"] = str(_("The text encoder is unavailable; keyword search only."))
            text_only = False
    vector = _combine(vectors)
    if vector is None and words is None:
        return _with_info(queryset.none(), info)

    vector_statuses = [Embedding.Status.INDEXED]
    text_statuses = [Embedding.Status.INDEXED, Embedding.Status.NO_IMAGE]
    if include_quarantined:
        vector_statuses += [Embedding.Status.FLAGGED, Embedding.Status.REJECTED]
        text_statuses = [status for status, _label in Embedding.Status.choices]
    floor, window = relevance(encoder) if text_only and vector is not None else (None, None)
    query = sql.FusedQuery(
        scope=scope, dimension=encoder.dimension, images_per_object=encoder.max_images, vector=vector,
        text=words.searched if words else "", terms=words.terms if words else ParsedQuery(()),
        boosted_tokens=words.keywords.boosted if words else [],
        phrase_tokens=words.keywords.phrases if words else [],
        vector_statuses=vector_statuses, text_statuses=text_statuses, depth=depth, weights=weights,
        rrf_k=options["RRF_K"], exact_boost=EXACT_BOOST, text_search_config=options["TEXT_SEARCH_CONFIG"],
        limit=limit or options["LIMIT"], floor=floor, window=window, vector_from_text=text_only,
    )
    info.legs = [leg for leg in LEGS if weights[leg] > 0 and (
        vector is not None if leg == "vector" else words is not None)]
    with transaction.atomic(using=using):
        sql.set_local_search_params(
            ef_search=min(1000, max(options["EF_SEARCH"], depth["vector"] * encoder.max_images)),
            iterative_scan=options["ITERATIVE_SCAN"], trigram_threshold=options["TRIGRAM_THRESHOLD"],
            using=using)
        result = sql.fused_search(query, using=using)
    info.hits = {hit.object_pk: hit for hit in result.hits}
    info.capped, info.relaxed = result.capped, result.relaxed
    return _with_info(_annotate(queryset, result.hits), info)


def _base(queryset: models.QuerySet) -> tuple[str, tuple] | None:
    """The queryset's ``SELECT pk … WHERE <filters>``, or None when it has no filter at all."""
    if not queryset.query.where and not queryset.query.is_sliced:
        return None
    return queryset.order_by().values("pk").query.sql_with_params()


def _annotate(queryset: models.QuerySet, hits: list[sql.FusedHit]) -> models.QuerySet:
    keys = [hit.object_pk for hit in hits]

    def at(values: list, db_type: str, output_field: models.Field, default: Any = None) -> ValueAt:
        return ValueAt("pk", keys, values, db_type, output_field, default)

    return queryset.filter(KeyIn("pk", keys)).annotate(
        search_score=at([h.score for h in hits], "float8", FloatField()),
        search_rank=at(list(range(1, len(hits) + 1)), "int8", BigIntegerField()),
        vector_rank=at([h.vector_rank for h in hits], "int8", BigIntegerField()),
        fulltext_rank=at([h.fulltext_rank for h in hits], "int8", BigIntegerField()),
        keyword_rank=at([h.keyword_rank for h in hits], "int8", BigIntegerField()),
        keyword_exact=at([h.keyword_exact for h in hits], "bool", BooleanField(), False),
        keyword_named=at([h.keyword_named for h in hits], "bool", BooleanField(), False),
    ).order_by("search_rank")


def _text_vector(text: str, encoder: EncoderModel) -> np.ndarray:
    from clip_search.encoders import get_text_encoder
    from clip_search.indexing import spec_for

    text_encoder = get_text_encoder(spec_for(encoder), encoder.fingerprint)
    if text_encoder.clip.fingerprint != encoder.fingerprint:
        raise RuntimeError(f"the weights of {encoder.name!r} changed since they were indexed")
    return text_encoder.encode_query(text)  # the process's LRU (TEXT_ENCODER["CACHE_SIZE"])


def _image_vector(image: bytes | IO[bytes], encoder: EncoderModel) -> np.ndarray:
    """Raises ``ImageRejected`` (with a code the API maps to 400/413/415) for a bad upload."""
    from clip_search.encoders import get_image_encoder
    from clip_search.indexing import spec_for

    data = image if isinstance(image, bytes) else image.read(clip_settings.IMAGE["MAX_BYTES"] + 1)
    image_encoder = get_image_encoder(spec_for(encoder), towers="image")
    if image_encoder.clip.fingerprint != encoder.fingerprint:
        raise RuntimeError(f"the weights of {encoder.name!r} changed since they were indexed")
    result = image_encoder.encode_bytes([data])[0]
    if result.error is not None:
        raise result.error
    return result.vector


def _stored_vector(model: type[models.Model], pk: str, encoder: EncoderModel,
                   include_quarantined: bool) -> np.ndarray:
    """"More like this" starts from the product's first image in display order (the picture
    a shopper sees first). A quarantined product's pictures are not storefront queries."""
    images = ImageEmbedding.objects.filter(
        content_type=ContentType.objects.get_for_model(model, for_concrete_model=False),
        object_pk=pk, encoder=encoder, vector__isnull=False)
    if not include_quarantined:
        images = images.filter(product_status=Embedding.Status.INDEXED)
    row = images.order_by("position").values_list("vector", flat=True).first()
    if row is None:
        raise SearchError(_("This product has no image embedding yet."))
    return np.asarray(row, dtype=np.float32)


def _combine(vectors: list[np.ndarray]) -> np.ndarray | None:
    if not vectors:
        return None
    combined = np.sum(vectors, axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(combined))
    return combined / norm if norm > 0 else None
