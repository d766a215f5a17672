"""The catalog's vocabulary and suggestions: built by aggregating clip_search's own rows, read
by spelling correction and search-as-you-type (``clip_search.lexicon``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections

from clip_search.sql.scope import Scope

# How many suggestions each kept row remembers: it is shown while one of them is still in the
# storefront. All of them for the usual one-product title; a sample of a brand's thousands.
LIVE_SAMPLE = 8


def rebuild(scope: Scope, statuses: list[str], using: str = "default") -> tuple[int, int]:
    """Replace the model's terms and suggestions with what its storefront rows hold now;
    returns (terms, suggestions). One transaction: searches see the old lexicon or the new."""
    where, params = scope.clause("e")
    content_type_id = scope.content_type_id
    with connections[using].cursor() as cursor:
        cursor.execute("DELETE FROM clip_search_term WHERE content_type_id = %s", [content_type_id])
        cursor.execute(f"""
            INSERT INTO clip_search_term (content_type_id, text, products)
            SELECT %s, word, count(*)
            FROM clip_search_embedding e, unnest(tsvector_to_array(e.words)) AS word
            WHERE {where} AND e.status = ANY(%s) AND e.words IS NOT NULL
              AND length(word) BETWEEN 2 AND 200 AND word !~ '[0-9]'
            GROUP BY word""", [content_type_id, *params, statuses])
        terms = cursor.rowcount
        cursor.execute("DELETE FROM clip_search_suggestion WHERE content_type_id = %s", [content_type_id])
        cursor.execute(f"""
            INSERT INTO clip_search_suggestion
                (content_type_id, kind, text, key, document, products, embeddings)
            SELECT %s, kind, min(text), key, to_tsvector('simple', min(text)), count(DISTINCT id),
                   (array_agg(DISTINCT id))[1:%s]
            FROM (
                SELECT e.id, left(k.kind, 32) AS kind, left(s.text, 300) AS text,
                       lower(left(s.text, 300)) AS key
                FROM clip_search_embedding e, jsonb_each(e.suggestions) AS k(kind, list),
                     jsonb_array_elements_text(CASE jsonb_typeof(k.list) WHEN 'array' THEN k.list
                                               ELSE '[]'::jsonb END) AS s(text)
                WHERE {where} AND e.status = ANY(%s) AND e.suggestions IS NOT NULL
                  AND btrim(s.text) <> '') AS offered
            GROUP BY kind, key""", [content_type_id, LIVE_SAMPLE, *params, statuses])
        suggestions = cursor.rowcount
    return terms, suggestions


def fill_words(rows: list[tuple[int, str, str]], using: str = "default") -> None:
    """(row id, text, suggestions as JSON) for rows written before words were stored."""
    if not rows:
        return
    ids, texts, suggestions = (list(column) for column in zip(*rows, strict=True))
    with connections[using].cursor() as cursor:
        cursor.execute("""
            UPDATE clip_search_embedding e
            SET words = strip(to_tsvector('simple', v.text)), suggestions = v.suggestions::jsonb
            FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, text, suggestions)
            WHERE e.id = v.id""", [ids, texts, suggestions])


@dataclass
class WordFacts:
    """What the lexicon says of a query's words (see ``analyse``)."""

    known: set[str]
    candidates: dict[str, list[tuple[str, int]]]  # unknown word → (catalog word, products), nearest first


def analyse(content_type_id: int, encoder_id: int, config: str, words: list[str], correctable: list[str],
            candidates: int, using: str = "default") -> WordFacts:
    """One round trip: which ``words`` the catalog uses (as written, or in another form of the
    same stem: "mugs" where the titles say "mug"), and for each ``correctable`` word it does not
    use, its nearest catalog words by trigram distance.
    """
    with connections[using].cursor() as cursor:
        cursor.execute("""
            WITH known AS MATERIALIZED (
                SELECT text FROM clip_search_term
                WHERE content_type_id = %s AND text = ANY(%s::varchar[])),
            stemmed AS MATERIALIZED (
                SELECT w.word AS text FROM unnest(%s::varchar[]) AS w(word)
                WHERE w.word NOT IN (SELECT text FROM known) AND EXISTS (
                    SELECT FROM clip_search_embedding e
                    WHERE e.content_type_id = %s AND e.encoder_id = %s
                      AND e.search_document @@ plainto_tsquery(%s::regconfig, w.word)))
            SELECT 'known', text, NULL::varchar, NULL::integer FROM known
            UNION ALL SELECT 'known', text, NULL, NULL FROM stemmed

            UNION ALL
            SELECT 'candidate', w.word, c.text, c.products
            FROM unnest(%s::varchar[]) AS w(word) CROSS JOIN LATERAL (
                SELECT t.text, t.products FROM clip_search_term t
                WHERE t.content_type_id = %s
                ORDER BY t.text <-> w.word LIMIT %s) AS c
            WHERE w.word NOT IN (SELECT text FROM known) AND w.word NOT IN (SELECT text FROM stemmed)""",
                       [content_type_id, words, words, content_type_id, encoder_id, config,
                        correctable, content_type_id, candidates])
        rows = cursor.fetchall()
    facts = WordFacts(known=set(), candidates={})
    for kind, text, candidate, products in rows:
        if kind == "known":
            facts.known.add(text)
        else:
            facts.candidates.setdefault(text, []).append((candidate, products))
    return facts


LIVE = ("EXISTS (SELECT FROM clip_search_embedding e "
        "WHERE e.id = ANY(s.embeddings) AND e.status = ANY(%s))")


# Prefix matches read before sorting them by products: past this many, the suggestions are
# walked in that order instead (their ordering index), each checked against the prefix.
SORT_AT_MOST = 1000


def suggest(content_type_id: int, prefix_query: str, live_statuses: list[str], limit: int,
            using: str = "default") -> list[tuple[str, str, int]]:
    """(kind, text, products) completing ``prefix_query`` (a ``to_tsquery('simple')`` text: every
    word whole but the last, which is a prefix), most products first; only suggestions one of
    whose products is still in the storefront.

    A rare prefix matches few suggestions: they are read from the word index and sorted. A common
    one ("r", "by") matches thousands: then the suggestions are walked in their sorted order and
    the first that match are kept. Whichever the prefix, a bounded read (measured at 200k
    products, 60k suggestions: p95 57 → 12 ms for one letter).
    """
    columns = "id, kind, text, products, embeddings"
    order = "ORDER BY products DESC, length(text), text"
    with connections[using].cursor() as cursor:
        cursor.execute(f"""
            WITH matched AS MATERIALIZED (
                SELECT {columns} FROM clip_search_suggestion
                WHERE content_type_id = %s AND document @@ to_tsquery('simple', %s) LIMIT %s)
            SELECT kind, text, products FROM (
                (SELECT {columns} FROM matched WHERE (SELECT count(*) FROM matched) < %s {order} LIMIT %s)
                UNION ALL
                (SELECT {columns} FROM clip_search_suggestion
                 WHERE (SELECT count(*) FROM matched) >= %s AND content_type_id = %s
                   AND document @@ to_tsquery('simple', %s) {order} LIMIT %s)) AS s
            WHERE {LIVE} {order} LIMIT %s""",
                       [content_type_id, prefix_query, SORT_AT_MOST, SORT_AT_MOST, limit * 3,
                        SORT_AT_MOST, content_type_id, prefix_query, limit * 3, live_statuses, limit])
        return cursor.fetchall()


def nearest_words(content_type_id: int, word: str, count: int, using: str = "default") -> list[str]:
    """The catalog words nearest ``word`` by trigrams (a typo of a word still being typed)."""
    with connections[using].cursor() as cursor:
        cursor.execute("""
            SELECT text FROM clip_search_term WHERE content_type_id = %s AND text %% %s
            ORDER BY text <-> %s LIMIT %s""", [content_type_id, word, word, count])
        return [row[0] for row in cursor.fetchall()]


def top_suggestions(content_type_id: int, live_statuses: list[str], kinds: list[str], limit: int,
                    using: str = "default") -> list[tuple[str, str, int]]:
    """What to offer before a word is typed: the suggestions of ``kinds`` with most products."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"""
            SELECT kind, text, products FROM (
                SELECT * FROM clip_search_suggestion WHERE content_type_id = %s AND kind = ANY(%s)
                ORDER BY products DESC, text LIMIT %s) AS s
            WHERE {LIVE} LIMIT %s""", [content_type_id, kinds, limit * 3, live_statuses, limit])
        return cursor.fetchall()
