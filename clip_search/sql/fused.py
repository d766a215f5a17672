"""The fused hybrid search statement: every leg, the shop's filters and reciprocal rank fusion
in one round trip (built by ``clip_search.search``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import connections

from clip_search.query import ParsedQuery, Term
from clip_search.sql.scope import Scope

# Matching rows a leg reads from its index before it keeps the ``depth`` best: a word that
# matches a tenth of the catalog (a brand, "backpack", a SKU prefix) then costs a bounded read,
# not the ranking of every match (~30 ms for 18k rows at 200k products).
READ_FACTOR = 10
# Products having every word of a query, among its vector hits, from which their median
# distance is taken as the bar for products only the vector leg found (``_relevant``).
MEDIAN_OF = 5


@dataclass
class FusedQuery:
    """Everything the one fused statement needs; built by ``clip_search.search``."""

    scope: Scope
    dimension: int
    vector: Sequence[float] | None
    text: str  # the query as searched (corrected), for trigram similarity
    terms: ParsedQuery  # the full-text leg's terms, with their corrections and synonyms
    boosted_tokens: list[str]  # keyword values that outrank everything (whole query, SKUs)
    phrase_tokens: list[str]  # keyword values named inside the query (brands): agreement only
    vector_statuses: list[str]
    text_statuses: list[str]
    depth: dict[str, int]
    images_per_object: int  # the encoder's ``max_images``: image hits read per object wanted
    weights: dict[str, float]
    rrf_k: float
    exact_boost: float
    text_search_config: str
    limit: int
    # Relevance floor of a text query's vector leg (cosine distances; None: off). ``window``:
    # how far behind the leg's best hit a hit may be; ``floor``: the distance a hit needs when
    # no word of the query matched any product's text or keywords.
    window: float | None = None
    floor: float | None = None
    # The vector comes from the query's words alone (not a picture, not "more like this"): its
    # hits answer to the relevance rules of ``_relevant``.
    vector_from_text: bool = False


@dataclass
class FusedHit:
    object_pk: str
    score: float
    vector_rank: int | None
    vector_distance: float | None
    fulltext_rank: int | None
    fulltext_score: float | None
    keyword_rank: int | None
    keyword_exact: bool  # the whole query or an identifier in it is one of its keyword values
    keyword_named: bool  # a keyword value (a brand) is named inside the query
    keyword_similarity: float | None


@dataclass
class FusedResult:
    """The hits, best first, and what the statement found out about the search itself."""

    hits: list[FusedHit] = field(default_factory=list)
    # A leg kept its full depth: more products may match than were ranked.
    capped: bool = False
    # No product matched every word: the full-text leg matched products with some of them.
    relaxed: bool = False


def fused_statement(query: FusedQuery) -> tuple[str, list] | None:
    """Every leg, the filters and reciprocal rank fusion in one statement.

    Each leg is a CTE over clip_search's tables limited to its depth and numbered by ``rank()``
    (equal evidence, equal rank: products that tie are not ordered by accident of their pks);
    the legs are full-outer-joined on the object and scored ``Σ weight / (k + rank)``, plus a
    boost that puts exact keyword (SKU) matches first. The shop queryset's own SQL is the
    ``IN (…)`` filter of every leg, so a filter is applied inside the HNSW scan (with pgvector's
    iterative scan) and not after it.
    """
    legs: list[tuple[str, str, list]] = []  # (name, CTE body, params)
    has_text = bool(query.terms.groups)
    if query.vector is not None and query.weights["vector"] > 0:
        legs.append(("vector", *_vector_leg(query)))
    if has_text and query.weights["fulltext"] > 0:
        legs.append(("fulltext", *_fulltext_leg(query, [name for name, *_ in legs])))
    if query.text and query.weights["keyword"] > 0:
        legs.append(("keyword", *_keyword_leg(query, [name for name, *_ in legs])))
    if not legs:
        return None
    params: list = []
    ctes = []
    for name, body, leg_params in legs:
        ctes.append(f"{name}_leg AS MATERIALIZED ({body})")
        params.extend(leg_params)
    names = [name for name, _, _ in legs]
    joined = f"{names[0]}_leg" + "".join(f" FULL JOIN {name}_leg USING (object_pk)" for name in names[1:])
    score_terms = []
    for name in names:
        score_terms.append(f"COALESCE(%s / (%s + {name}_leg.rank), 0)")
        params.extend([float(query.weights[name]), float(query.rrf_k)])
    if "keyword" in names:
        score_terms.append("CASE WHEN keyword_leg.exact THEN %s ELSE 0 END")
        params.append(float(query.exact_boost))
    columns = {
        "vector": "vector_leg.rank AS vector_rank, vector_leg.distance",
        "fulltext": "fulltext_leg.rank AS fulltext_rank, fulltext_leg.score",
        "keyword": ("keyword_leg.rank AS keyword_rank, keyword_leg.exact, keyword_leg.phrase, "
                    "keyword_leg.similarity"),
    }
    empty = {"vector": "NULL::bigint AS vector_rank, NULL::float8",
             "fulltext": "NULL::bigint AS fulltext_rank, NULL::float4",
             "keyword": "NULL::bigint AS keyword_rank, NULL::boolean, NULL::boolean, NULL::float4"}
    select = ", ".join(columns[name] if name in names else empty[name] for name in columns)
    where, where_params = _relevant(query, names)
    params.extend(where_params)
    # More products may match than the hits: a leg kept its full depth (the vector leg's last
    # hit still relevant), or the hits themselves are more than the limit.
    capped = [f"(SELECT count(*) FROM {name}_leg) >= %s" for name in names if name != "vector"]
    params.extend(int(query.depth[name]) for name in names if name != "vector")
    if "vector" in names:
        capped.append("((SELECT count(*) FROM vector_leg) >= %s AND EXISTS ("
                      "SELECT FROM fused WHERE vector_rank = (SELECT max(rank) FROM vector_leg)))")
        params.append(int(query.depth["vector"]))
    capped.append("(SELECT count(*) FROM fused) > %s")
    params.append(int(query.limit))
    relaxed = "(SELECT bool_or(relaxed) FROM fulltext_leg)" if "fulltext" in names else "false"
    statement = (
        f"WITH {', '.join(ctes)}, fused AS MATERIALIZED ("
        f"SELECT object_pk, ({' + '.join(score_terms)})::float8 AS fused_score, {select} "
        f"FROM {joined} {where}) "
        f"SELECT *, ({' OR '.join(capped)}) AS capped, COALESCE({relaxed}, false) AS relaxed "
        f"FROM fused ORDER BY fused_score DESC, object_pk LIMIT %s"
    )
    params.append(int(query.limit))
    return statement, params


def _relevant(query: FusedQuery, names: list[str]) -> tuple[str, list]:
    """Which hits only the vector leg found a text query keeps.

    - When products have every word of the query, they show how near a relevant product's
      picture is to it: a product no text leg found must be at least as near as the median of
      those (of the ones among the vector hits, when there are ``MEDIAN_OF`` or more). "umbrella"
      then keeps a picture CLIP finds more umbrella-like than most products titled umbrella, and
      drops the hundred things merely nearer than the rest of the catalog. With fewer, a median
      is no estimate: such a product must be within the relevance window of the farthest of them
      (a query naming a brand, colour and kind that one product has keeps the other brands'
      products of that colour and kind; a brand two products have does not bring in hats), and
      without a window (not calibrated, or turned off) there is no bound.
    - When no word matched any product's text, the vector leg answers alone (a SKU or a brand
      the keyword leg matched means nothing to CLIP): its hits must be nearer than what made-up
      words reach (the noise floor, ``calibration``), or a query that means nothing here would
      list the nearest anything, and an exact SKU would be followed by a hundred strangers.
    """
    if not query.vector_from_text or "vector" not in names:
        return "", []
    text_legs = [name for name in names if name != "vector"]
    found_by_words = [f"{name}_leg.rank IS NOT NULL" for name in text_legs]
    conditions, params = [], []
    if "fulltext" in names:
        # Without a window (not calibrated yet, or turned off) fewer matches set no bound.
        anchored = "WHEN count(*) > 0 THEN max(v.distance) + %s" if query.window is not None else ""
        conditions.append(" OR ".join([*found_by_words, f"""vector_leg.distance <= COALESCE((
            SELECT CASE WHEN count(*) >= %s THEN percentile_cont(0.5) WITHIN GROUP (ORDER BY v.distance)
                        {anchored} END
            FROM vector_leg v JOIN fulltext_leg f USING (object_pk) WHERE NOT f.relaxed), 2)"""]))
        params += [MEDIAN_OF, *([float(query.window)] if query.window is not None else [])]
    if query.floor is not None and "fulltext" in names:
        # A SKU or a brand matched by the keyword leg means nothing to CLIP: only words found in
        # the products' text vouch that the query is about something the pictures can show.
        # (With the full-text leg turned off there is no such evidence either way: no floor.)
        conditions.append(" OR ".join([*found_by_words, "vector_leg.distance <= %s",
                                       "EXISTS (SELECT FROM fulltext_leg)"]))
        params.append(float(query.floor))
    return ("WHERE " + " AND ".join(f"({c})" for c in conditions), params) if conditions else ("", [])


def _vector_leg(query: FusedQuery) -> tuple[str, list]:
    """The nearest images, collapsed to one hit per object (its best image), no further behind
    the best hit than ``window`` (when set: the leg's relevance floor for text queries).

    ``depth × images_per_object`` images always hold ``depth`` objects when there are that
    many (no object has more images than that), and pgvector's iterative scan keeps walking
    the graph until the filter has let that many through. With one image per object (the
    usual) this is the plain HNSW top-``depth``.
    """
    scope, scope_params = query.scope.clause("i")
    depth = query.depth["vector"]
    # The text legs rank the vector hits too: the hits carry what those legs read (from the
    # object's row, by its unique key), so no leg fetches the same rows again.
    carried = ("search_document", "keywords", "keyword_tokens") if query.text else ()
    columns = "".join(f", e.{c}" for c in carried)
    join = "JOIN clip_search_embedding e ON e.id = best.embedding_id" if carried else ""
    window = "WHERE best.distance <= best.nearest + %s" if query.window is not None else ""
    body = f"""
        SELECT best.object_pk, rank() OVER (ORDER BY best.distance) AS rank, best.distance{columns}
        FROM (
            SELECT object_pk, embedding_id, distance, min(distance) OVER () AS nearest FROM (
                SELECT object_pk, embedding_id, min(distance) AS distance FROM (
                    SELECT i.object_pk, i.embedding_id,
                           i.vector::vector({int(query.dimension)}) <=> %s::vector AS distance
                    FROM clip_search_imageembedding i
                    WHERE {scope} AND i.product_status = ANY(%s)
                    ORDER BY distance LIMIT %s) AS images
                GROUP BY object_pk, embedding_id ORDER BY distance LIMIT %s) AS objects) AS best
        {join} {window}"""
    params = [_vector_literal(query.vector), *scope_params, query.vector_statuses,
              depth * max(1, query.images_per_object), depth]
    if query.window is not None:
        params.append(float(query.window))
    return body, params


def tsquery(terms: ParsedQuery, config: str, *, loose: bool = False) -> tuple[str, list]:
    """The full-text query of ``terms``: each form through ``websearch_to_tsquery`` (stemming
    and stop words as PostgreSQL does them), OR-ed within a term and a group, the groups AND-ed
    (``loose``: OR-ed, negations still AND-ed)."""
    def form(text: str, phrase: bool) -> tuple[str, list]:
        quoted = f'"{text}"' if phrase or " " in text else text
        return "websearch_to_tsquery(%s::regconfig, %s)", [config, quoted]

    def term_sql(term: Term) -> tuple[str, list]:
        parts = [form(text, term.phrase) for text in term.forms]
        sql = "(" + " || ".join(sql for sql, _ in parts) + ")"
        return f"!! {sql}" if term.negated else sql, [p for _, params in parts for p in params]

    positive: list[tuple[str, list]] = []
    negative: list[tuple[str, list]] = []  # groups of negated terms only: AND-ed even when loose
    for group in terms.groups:
        parts = [term_sql(term) for term in group]
        sql = "(" + " || ".join(part for part, _ in parts) + ")"
        params = [p for _, ps in parts for p in ps]
        (negative if all(term.negated for term in group) else positive).append((sql, params))
    joiner = " || " if loose else " && "
    sql = joiner.join(part for part, _ in positive) or "''::tsquery"
    params = [p for _, ps in positive for p in ps]
    for part, ps in negative:
        sql, params = f"({sql}) && {part}", [*params, *ps]
    return sql, params


def _fulltext_leg(query: FusedQuery, others: list[str]) -> tuple[str, list]:
    """Full-text matches ranked by ``ts_rank``: a bounded read of the GIN index, plus every
    vector hit that matches, so that the products both legs found are ranked by both.

    Products must match every term; when none does (a word no product uses: "crimson
    backpack"), products matching some are ranked instead (``relaxed``), most terms first, as
    Meilisearch and Algolia drop words rather than answer nothing.

    When fewer than ``READ_FACTOR × depth`` products match, this is the exact ranking of all.
    ``ts_rank``, not ``ts_rank_cd``: at 200k products it ranked better (top-10 attribute match
    0.91 against 0.80 over 193 shop queries, bench/README.md) at a twentieth of the cost
    (0.25 ms against 4.9 ms for 1,800 rows).
    """
    depth, read = query.depth["fulltext"], query.depth["fulltext"] * READ_FACTOR
    scope, scope_params = query.scope.clause("e")
    strict_sql, strict_params = tsquery(query.terms, query.text_search_config)
    positive_groups = [group for group in query.terms.groups if not all(term.negated for term in group)]
    loose = len(positive_groups) > 1
    from_vector = "vector" in others

    def matches(column: str, expression: tuple[str, list], guard: str = "") -> tuple[str, list]:
        # The index read names the query itself, not ``(SELECT … FROM q)``: the planner can then
        # estimate how many rows it matches, and starts from a selective filter's few rows (a
        # brand's 1 %) instead of from the words' 40,000 (measured: 427 → 159 ms p95 at 200k).
        condition, condition_params = expression
        parts = [f"""
            (SELECT e.object_pk, e.search_document, e.keywords, e.keyword_tokens
             FROM clip_search_embedding e
             WHERE {scope} AND e.status = ANY(%s) AND e.search_document @@ ({condition}) {guard}
               {"AND e.object_pk NOT IN (SELECT object_pk FROM vector_leg)" if from_vector else ""}
             LIMIT %s)"""]
        params = [*scope_params, query.text_statuses, *condition_params, read]
        if from_vector:
            parts.append(f"""
            (SELECT object_pk, search_document, keywords, keyword_tokens FROM vector_leg
             WHERE search_document @@ (SELECT {column} FROM q) {guard})""")
        return " UNION ALL ".join(parts), params

    strict, strict_match_params = matches("query", (strict_sql, strict_params))
    ctes = [f"strict AS MATERIALIZED ({strict})"]
    params = [*strict_match_params]
    found = "SELECT *, false AS relaxed, ts_rank(search_document, (SELECT query FROM q)) AS score FROM strict"
    q_columns, q_params = f"{strict_sql}", [*strict_params]
    if loose:
        loose_sql, loose_params = tsquery(query.terms, query.text_search_config, loose=True)
        q_columns, q_params = f"{strict_sql}, {loose_sql}", [*strict_params, *loose_params]
        # NOT EXISTS over strict is a one-time filter: no read when a product has every word.
        relaxed, relaxed_params = matches("loose", (loose_sql, loose_params),
                                          "AND NOT EXISTS (SELECT FROM strict)")
        ctes.append(f"relaxed AS MATERIALIZED ({relaxed})")
        params += relaxed_params
        found += (" UNION ALL SELECT *, true, ts_rank(search_document, (SELECT loose FROM q)) FROM relaxed")
    q_names = "query, loose" if loose else "query"
    return f"""
        WITH q({q_names}) AS (SELECT {q_columns}), {', '.join(ctes)}
        SELECT object_pk, rank() OVER (ORDER BY score DESC) AS rank, score, relaxed, keywords, keyword_tokens
        FROM ({found} ORDER BY score DESC LIMIT %s) AS hits""", [*q_params, *params, depth]


def _keyword_leg(query: FusedQuery, others: list[str]) -> tuple[str, list]:
    """SKU and brand matches: exact values first, then ``word_similarity`` above the threshold.

    A whole-query value or an identifier (``boosted_tokens``: a SKU, a model number) is read from
    the tokens' GIN index and outranks everything. A value named inside a longer query
    (``phrase_tokens``: "Nordvik" in "Nordvik red mug") counts only for the products the full-text
    leg found, ranked as it ranked them: a brand matches a tenth of a catalog, and alone it would
    lift every product of that brand over what the rest of the query asked for (measured: fused
    nDCG@10 0.96 → 0.59 when any vector hit of the brand got its vote).
    The trigram index is read (bounded) only when the other legs cannot have found the match
    and no value matched exactly: the query holds an identifier (a partial SKU), or the vector
    leg is not running. A query of plain words ("red mug") skips it: there the index hands out
    every SKU with "mug" in it, each to fail the similarity recheck (17-40 ms at 200k products).
    """
    depth, text = query.depth["keyword"], query.text
    boosted, phrases = query.boosted_tokens, query.phrase_tokens
    scope, scope_params = query.scope.clause("e")
    exact = f"""
        SELECT e.object_pk, true AS exact, false AS phrase, word_similarity(%s, e.keywords) AS similarity,
               NULL::bigint AS other_rank, NULL::bigint AS text_rank
        FROM clip_search_embedding e
        WHERE {scope} AND e.status = ANY(%s) AND e.keyword_tokens && %s::varchar[]
        LIMIT %s"""
    params: list = [text, *scope_params, query.text_statuses, boosted, depth]
    found = ["SELECT * FROM exact"]
    if others:
        # A named value agrees with the rest of the query where the full-text leg found the
        # product: its words are there too. The vector leg's 200 nearest are no such evidence.
        text_rank = {name: "rank" if name == "fulltext" else "NULL::bigint" for name in others}
        candidates = " UNION ALL ".join(
            f"SELECT object_pk, keywords, keyword_tokens, rank, {text_rank[name]} AS text_rank "
            f"FROM {name}_leg" for name in others)
        found.append(f"""
            SELECT object_pk, keyword_tokens && %s::varchar[] AS exact,
                   text_rank IS NOT NULL AND keyword_tokens && %s::varchar[] AS phrase,
                   word_similarity(%s, keywords), rank, text_rank
            FROM ({candidates}) AS c
            WHERE keyword_tokens && %s::varchar[] OR %s <%% keywords
               OR (text_rank IS NOT NULL AND keyword_tokens && %s::varchar[])""")
        params += [boosted, phrases, text, boosted, text, phrases]
    if "vector" not in others or any(c.isdigit() for c in text):
        # NOT EXISTS over the exact rows is a one-time filter: no read when a value matched.
        found.append(f"""
            (SELECT object_pk, false, false, similarity, NULL::bigint, NULL::bigint FROM (
                SELECT e.object_pk, word_similarity(%s, e.keywords) AS similarity
                FROM clip_search_embedding e
                WHERE {scope} AND e.status = ANY(%s) AND %s <%% e.keywords
                  AND NOT EXISTS (SELECT FROM exact)
                LIMIT %s) AS fuzzy
             ORDER BY similarity DESC LIMIT %s)""")
        params += [text, *scope_params, query.text_statuses, text, depth * READ_FACTOR, depth]
    return f"""
        WITH exact AS MATERIALIZED ({exact})
        SELECT object_pk, rank() OVER (ORDER BY exact DESC, phrase DESC, agreed, similarity DESC) AS rank,
               exact, phrase, similarity FROM (
            SELECT object_pk, bool_or(exact) AS exact, bool_or(phrase) AS phrase,
                   max(similarity) AS similarity,
                   -- exact values rank as the other legs ranked the product; named ones as the
                   -- full-text leg did
                   CASE WHEN bool_or(exact) THEN min(other_rank) WHEN bool_or(phrase) THEN min(text_rank)
                   END AS agreed
            FROM ({" UNION ALL ".join(found)}) AS found
            GROUP BY object_pk
            ORDER BY exact DESC, phrase DESC, agreed NULLS LAST, similarity DESC LIMIT %s) AS hits""", [
        *params, depth]


def fused_search(query: FusedQuery, using: str = "default") -> FusedResult:
    """Run ``fused_statement``: the hits, best first, and what the statement found out."""
    statement = fused_statement(query)
    if statement is None:
        return FusedResult()
    with connections[using].cursor() as cursor:
        cursor.execute(*statement)
        rows = cursor.fetchall()
    if not rows:
        return FusedResult()
    return FusedResult(
        hits=[FusedHit(pk, score, vr, vd, fr, fs, kr, bool(ke), bool(kn), ks)
              for pk, score, vr, vd, fr, fs, kr, ke, kn, ks, _capped, _relaxed in rows],
        capped=bool(rows[0][-2]), relaxed=bool(rows[0][-1]))


def nearest_distance(encoder_id: int, dimension: int, vector: Sequence[float], statuses: list[str],
                     using: str = "default") -> float | None:
    """The cosine distance of the encoder's nearest image to ``vector`` (its HNSW index), or None."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"""
            SELECT i.vector::vector({int(dimension)}) <=> %s::vector AS distance
            FROM clip_search_imageembedding i WHERE i.encoder_id = %s AND i.product_status = ANY(%s)
            ORDER BY distance LIMIT 1""", [_vector_literal(vector), int(encoder_id), statuses])
        row = cursor.fetchone()
    return None if row is None else float(row[0])


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(v):.7g}" for v in vector) + "]"
