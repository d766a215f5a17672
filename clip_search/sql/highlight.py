"""``ts_headline`` over a page of results: the words a query matched, marked."""

from __future__ import annotations

from django.db import connections

from clip_search.query import ParsedQuery
from clip_search.sql.fused import tsquery


def headlines(texts: list[str], options: list[str], terms: ParsedQuery, config: str,
              using: str = "default") -> list[str]:
    """Each text with the words ``terms`` match wrapped as ``options`` say (``StartSel`` ...),
    in one statement for the whole page."""
    if not texts:
        return []
    query_sql, query_params = tsquery(terms, config)
    with connections[using].cursor() as cursor:
        cursor.execute(f"""
            WITH q(query) AS (SELECT {query_sql})
            SELECT ts_headline(%s::regconfig, x.text, (SELECT query FROM q), x.options)
            FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(text, options, position)
            ORDER BY x.position""", [*query_params, config, texts, options])
        return [row[0] for row in cursor.fetchall()]
