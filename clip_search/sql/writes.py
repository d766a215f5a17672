"""The indexer's batch updates (``indexing.write_many``): one UPDATE for a batch's product rows and
one for its image rows, the values of every row passed as one jsonb array (``jsonb_to_recordset``).

Django's ``bulk_update`` says the same with a ``CASE WHEN id = … THEN …`` per field and row;
building those expressions cost a reindex 7 ms of CPU per image, as much as decoding the
JPEG (bench/README.md, "Session 9: the reindex pipeline"). The full-text document is built
here by the same SQL as ``indexing.document_fields``' ``SearchVector`` expressions: each
(weight, text) part ``setweight(to_tsvector(config, text), weight)``, concatenated in order.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections

from clip_search.models import Embedding, ImageEmbedding


def update_products(rows: list[dict[str, Any]], *, config: str, now: datetime,
                    using: str = "default") -> None:
    """Each row: ``id``, ``status``, ``error``, ``source_digest``, ``attempts`` ("increment",
    "reset" or "keep"), ``embedded`` (set ``embedded_at`` to ``now``), ``parts`` (the document's
    [weight, text] pairs, empty texts left out: none gives NULL, as ``document_fields``),
    ``keywords``, ``keyword_tokens``, ``words`` (the text the vocabulary's words come from),
    ``suggestions``. ``stale`` and ``reembed`` are cleared."""
    if not rows:
        return
    slots = max(len(row["parts"]) for row in rows)
    part = ("setweight(to_tsvector(%(config)s::regconfig, COALESCE(v.parts->{i}->>1, '')), "
            "COALESCE(v.parts->{i}->>0, 'D')::\"char\")")
    document = " || ".join(part.format(i=i) for i in range(slots)) or "NULL"
    table = Embedding._meta.db_table
    statement = f"""
        UPDATE {table} AS e SET
            status = v.status, error = v.error, stale = false, reembed = false,
            source_digest = v.source_digest, updated_at = %(now)s,
            attempts = CASE v.attempts WHEN 'increment' THEN e.attempts + 1 WHEN 'reset' THEN 0
                                       ELSE e.attempts END,
            embedded_at = CASE WHEN v.embedded THEN %(now)s ELSE e.embedded_at END,
            search_document = CASE WHEN jsonb_array_length(v.parts) > 0 THEN {document} END,
            keywords = v.keywords, keyword_tokens = v.keyword_tokens,
            words = strip(to_tsvector('simple'::regconfig, COALESCE(v.words, ''))),
            suggestions = v.suggestions
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(
            id bigint, status text, error text, source_digest text, attempts text, embedded boolean,
            parts jsonb, keywords text, keyword_tokens varchar(200)[], words text, suggestions jsonb)
        WHERE e.id = v.id"""
    with connections[using].cursor() as cursor:
        cursor.execute(statement, {"rows": json.dumps(rows, cls=DjangoJSONEncoder), "config": config,
                                   "now": now})


def update_images(rows: list[dict[str, Any]], using: str = "default") -> None:
    """Each row: ``id``, ``position``, ``name``, ``size``, ``sha256``, ``verdict``,
    ``moderation_scores``, ``error``, ``product_status``, and ``vector`` (pgvector's text form,
    or None for no vector) when ``fresh``; a row not fresh keeps its stored vector untouched."""
    if not rows:
        return
    table = ImageEmbedding._meta.db_table
    statement = f"""
        UPDATE {table} AS i SET
            position = v.position, name = v.name, size = v.size, sha256 = v.sha256, verdict = v.verdict,
            moderation_scores = v.moderation_scores, error = v.error, product_status = v.product_status,
            vector = CASE WHEN v.fresh THEN v.vector::vector ELSE i.vector END
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(
            id bigint, position smallint, name text, size bigint, sha256 text, verdict text,
            moderation_scores jsonb, error text, product_status text, fresh boolean, vector text)
        WHERE i.id = v.id"""
    with connections[using].cursor() as cursor:
        cursor.execute(statement, {"rows": json.dumps(rows, cls=DjangoJSONEncoder)})
