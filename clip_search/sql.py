"""The only raw SQL in clip_search: what the ORM cannot say. Always parameterised.

- the per-encoder partial HNSW index over an expression (``vector::vector(dim)``) on the
  image table;
- per-transaction planner settings for pgvector (``SET LOCAL hnsw.ef_search``);
- the fused hybrid search statement: CTEs, ``FULL JOIN`` and window functions over legs
  limited before they are joined, which the ORM cannot express;
- catalog look-ups for the system checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from clip_search.conf import clip_settings


def vector_index_name(encoder_id: int) -> str:
    return f"clip_search_hnsw_encoder_{int(encoder_id)}"


def ensure_vector_index(encoder_id: int, dimension: int, using: str = "default") -> bool:
    """Create the encoder's partial HNSW cosine index if it is missing. True if created.

    Expression and predicate match what search.py queries (``vector::vector(dim)`` and
    ``encoder_id = N``), which is what lets the planner pick the index.
    """
    name = vector_index_name(encoder_id)
    hnsw = clip_settings.HNSW
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s AND relkind = 'i'", [name])
        if cursor.fetchone():
            return False
        if connection.in_atomic_block:
            # Django's foreign keys are DEFERRABLE: rows written earlier in this transaction
            # leave trigger events that CREATE INDEX refuses to run over. Check them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # Identifiers and integers cannot be bound parameters in DDL; every value below is an
        # int() or a name built from one, so nothing from outside reaches the statement text.
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON clip_search_imageembedding "
            f"USING hnsw ((vector::vector({int(dimension)})) vector_cosine_ops) "
            f"WITH (m = {int(hnsw['M'])}, ef_construction = {int(hnsw['EF_CONSTRUCTION'])}) "
            f"WHERE encoder_id = {int(encoder_id)}"
        )
    return True


def drop_vector_index(encoder_id: int, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {vector_index_name(encoder_id)}")


def set_local_search_params(ef_search: int, iterative_scan: str, trigram_threshold: float | None = None,
                            using: str = "default") -> None:
    """pgvector, pg_trgm and planner settings for the current transaction only (pgvector-python #43)."""
    # No JIT: compiling costs 50-200 ms whenever the planner's estimate passes jit_above_cost,
    # and this statement's LIMITed index scans finish long before compiled code would pay off.
    settings = {"hnsw.ef_search": str(int(ef_search)), "hnsw.iterative_scan": iterative_scan, "jit": "off"}
    if trigram_threshold is not None:
        settings["pg_trgm.word_similarity_threshold"] = str(float(trigram_threshold))
    with connections[using].cursor() as cursor:  # one round trip for all of them
        cursor.execute("SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings)),
                       [item for pair in settings.items() for item in pair])


def extension_status(connection: BaseDatabaseWrapper, name: str) -> tuple[bool, bool]:
    """(available on the server, installed in this database) for a PostgreSQL extension."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT default_version IS NOT NULL, installed_version IS NOT NULL "
            "FROM pg_available_extensions WHERE name = %s",
            [name],
        )
        row = cursor.fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


@dataclass
class FusedQuery:
    """Everything the one fused statement needs; built by ``clip_search.search``."""

    content_type_id: int
    encoder_id: int
    dimension: int
    base: tuple[str, Sequence] | None  # the shop queryset's ``SELECT pk`` (its filters), or None
    pk_type: str  # the shop pk's SQL type ("integer", "uuid", ...): object_pk is cast to it
    integer_pk: bool  # the shop pk is an integer: rows are matched on their ``object_id``
    exclude_pk: str | None
    vector: Sequence[float] | None
    text: str
    exact_tokens: list[str]
    vector_statuses: list[str]
    text_statuses: list[str]
    depth: dict[str, int]
    images_per_object: int  # the encoder's ``max_images``: image hits read per object wanted
    weights: dict[str, float]
    rrf_k: float
    exact_boost: float
    text_search_config: str
    limit: int


@dataclass
class FusedHit:
    object_pk: str
    score: float
    vector_rank: int | None
    vector_distance: float | None
    fulltext_rank: int | None
    fulltext_score: float | None
    keyword_rank: int | None
    keyword_exact: bool
    keyword_similarity: float | None


def fused_statement(query: FusedQuery) -> tuple[str, list] | None:
    """Every leg, the filters and reciprocal rank fusion in one statement.

    Each leg is a CTE over ``clip_search_embedding`` limited to its depth and numbered by
    ``rank()`` (equal evidence, equal rank: products that tie are not ordered by accident
    of their pks); the legs are full-outer-joined on the object and scored
    ``Σ weight / (k + rank)``, plus a boost that puts exact keyword (SKU) matches first.
    The shop queryset's own SQL is the ``IN (…)`` filter of every leg, so a filter is applied
    inside the HNSW scan (with pgvector's iterative scan) and not after it.
    """
    legs: list[tuple[str, str, list]] = []  # (name, CTE body, params)
    scope, scope_params = _scope(query)
    if query.vector is not None and query.weights["vector"] > 0:
        legs.append(("vector", *_vector_leg(query)))
    if query.text and query.weights["fulltext"] > 0:
        legs.append(("fulltext", *_fulltext_leg(query, scope, scope_params, [name for name, *_ in legs])))
    if query.text and query.weights["keyword"] > 0:
        legs.append(("keyword", *_keyword_leg(query, scope, scope_params, [name for name, *_ in legs])))
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
        "vector": "vector_leg.rank, vector_leg.distance",
        "fulltext": "fulltext_leg.rank, fulltext_leg.score",
        "keyword": "keyword_leg.rank, keyword_leg.exact, keyword_leg.similarity",
    }
    empty = {"vector": "NULL::bigint, NULL::float8", "fulltext": "NULL::bigint, NULL::float4",
             "keyword": "NULL::bigint, NULL::boolean, NULL::float4"}
    select = ", ".join(columns[name] if name in names else empty[name] for name in columns)
    statement = (
        f"WITH {', '.join(ctes)} "
        f"SELECT object_pk, ({' + '.join(score_terms)})::float8 AS fused_score, {select} "
        f"FROM {joined} ORDER BY fused_score DESC, object_pk LIMIT %s"
    )
    params.append(int(query.limit))
    return statement, params


def _vector_leg(query: FusedQuery) -> tuple[str, list]:
    """The nearest images, collapsed to one hit per object (its best image).

    ``depth × images_per_object`` images always hold ``depth`` objects when there are that
    many (no object has more images than that), and pgvector's iterative scan keeps walking
    the graph until the filter has let that many through. With one image per object (the
    usual) this is the plain HNSW top-``depth``.
    """
    scope, scope_params = _scope(query, "i")
    depth = query.depth["vector"]
    # The text legs rank the vector hits too: the hits carry what those legs read (from the
    # object's row, by its unique key), so no leg fetches the same rows again.
    carried = ("search_document", "keywords", "keyword_tokens") if query.text else ()
    columns = "".join(f", e.{c}" for c in carried)
    join = "JOIN clip_search_embedding e ON e.id = best.embedding_id" if carried else ""
    body = f"""
        SELECT best.object_pk, rank() OVER (ORDER BY best.distance) AS rank, best.distance{columns}
        FROM (
            SELECT object_pk, embedding_id, min(distance) AS distance FROM (
                SELECT i.object_pk, i.embedding_id,
                       i.vector::vector({int(query.dimension)}) <=> %s::vector AS distance
                FROM clip_search_imageembedding i
                WHERE {scope} AND i.product_status = ANY(%s)
                ORDER BY distance LIMIT %s) AS images
            GROUP BY object_pk, embedding_id ORDER BY distance LIMIT %s) AS best
        {join}"""
    params = [_vector_literal(query.vector), *scope_params, query.vector_statuses,
              depth * max(1, query.images_per_object), depth]
    return body, params


# Matching rows a leg reads from its index before it keeps the ``depth`` best: a word that
# matches a tenth of the catalog (a brand, "backpack", a SKU prefix) then costs a bounded read,
# not the ranking of every match (~30 ms for 18k rows at 200k products).
READ_FACTOR = 10


def _fulltext_leg(query: FusedQuery, scope: str, scope_params: list, others: list[str]) -> tuple[str, list]:
    """Full-text matches ranked by ``ts_rank``: a bounded read of the GIN index, plus every
    vector hit that matches, so that the products both legs found are ranked by both.

    When fewer than ``READ_FACTOR × depth`` products match, this is the exact ranking of all.
    ``ts_rank``, not ``ts_rank_cd``: at 200k products it ranked better (top-10 attribute match
    0.91 against 0.80 over 193 shop queries, bench/README.md) at a twentieth of the cost
    (0.25 ms against 4.9 ms for 1,800 rows).
    """
    depth = query.depth["fulltext"]
    from_vector = "vector" in others
    parts = [f"""
        (SELECT e.object_pk, e.search_document, e.keywords, e.keyword_tokens
         FROM clip_search_embedding e
         WHERE {scope} AND e.status = ANY(%s) AND e.search_document @@ (SELECT query FROM q)
           {"AND e.object_pk NOT IN (SELECT object_pk FROM vector_leg)" if from_vector else ""}
         LIMIT %s)"""]
    params = [query.text_search_config, query.text, *scope_params, query.text_statuses, depth * READ_FACTOR]
    if from_vector:
        parts.append("""
        (SELECT object_pk, search_document, keywords, keyword_tokens FROM vector_leg
         WHERE search_document @@ (SELECT query FROM q))""")
    return f"""
        WITH q(query) AS (SELECT websearch_to_tsquery(%s::regconfig, %s))
        SELECT object_pk, rank() OVER (ORDER BY score DESC) AS rank, score, keywords, keyword_tokens FROM (
            SELECT object_pk, ts_rank(search_document, (SELECT query FROM q)) AS score,
                   keywords, keyword_tokens
            FROM ({" UNION ALL ".join(parts)}) AS found
            ORDER BY score DESC LIMIT %s) AS hits""", [*params, depth]


def _keyword_leg(query: FusedQuery, scope: str, scope_params: list, others: list[str]) -> tuple[str, list]:
    """SKU and brand matches: exact tokens first, then ``word_similarity`` above the threshold.

    A brand matches a tenth of a catalog. Of its rows the leg keeps first the ones the other
    legs found, the only ones the fusion can lift ("nordvik lamp" wants Nordvik lamps, not any
    Nordvik product), then exact ones from the tokens' GIN index. The trigram index is read
    (bounded) only when the other legs cannot have found the match and no value matched
    exactly: the query holds an identifier (a partial SKU), or the vector leg is not running.
    A query of plain words ("red mug") skips it: there the index hands out every SKU with "mug"
    in it, each to fail the similarity recheck (17-40 ms at 200k products, for no row).
    """
    depth, text, tokens = query.depth["keyword"], query.text, query.exact_tokens
    exact = f"""
        SELECT e.object_pk, true AS exact, word_similarity(%s, e.keywords) AS similarity,
               false AS candidate
        FROM clip_search_embedding e
        WHERE {scope} AND e.status = ANY(%s) AND e.keyword_tokens && %s::varchar[]
        LIMIT %s"""
    params = [text, *scope_params, query.text_statuses, tokens, depth]
    found = ["SELECT * FROM exact"]
    if others:
        candidates = " UNION ".join(f"SELECT object_pk, keywords, keyword_tokens FROM {name}_leg"
                                    for name in others)
        found.append(f"""
            SELECT object_pk, keyword_tokens && %s::varchar[], word_similarity(%s, keywords), true
            FROM ({candidates}) AS c
            WHERE keyword_tokens && %s::varchar[] OR %s <%% keywords""")
        params += [tokens, text, tokens, text]
    if "vector" not in others or any(c.isdigit() for c in text):
        # NOT EXISTS over the exact rows is a one-time filter: no read when a value matched.
        found.append(f"""
            (SELECT object_pk, false, similarity, false FROM (
                SELECT e.object_pk, word_similarity(%s, e.keywords) AS similarity
                FROM clip_search_embedding e
                WHERE {scope} AND e.status = ANY(%s) AND %s <%% e.keywords
                  AND NOT EXISTS (SELECT FROM exact)
                LIMIT %s) AS fuzzy
             ORDER BY similarity DESC LIMIT %s)""")
        params += [text, *scope_params, query.text_statuses, text, depth * READ_FACTOR, depth]
    return f"""
        WITH exact AS MATERIALIZED ({exact})
        SELECT object_pk, rank() OVER (ORDER BY exact DESC, similarity DESC) AS rank,
               exact, similarity FROM (
            SELECT object_pk, bool_or(exact) AS exact, max(similarity) AS similarity,
                   bool_or(candidate) AS candidate
            FROM ({" UNION ALL ".join(found)}) AS found
            GROUP BY object_pk
            ORDER BY exact DESC, similarity DESC, candidate DESC LIMIT %s) AS hits""", [*params, depth]


def fused_search(query: FusedQuery, using: str = "default") -> list[FusedHit]:
    """Run ``fused_statement``: the hits, best first."""
    statement = fused_statement(query)
    if statement is None:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(*statement)
        rows = cursor.fetchall()
    return [FusedHit(pk, score, vr, vd, fr, fs, kr, bool(ke), ks)
            for pk, score, vr, vd, fr, fs, kr, ke, ks in rows]


def _scope(query: FusedQuery, alias: str = "e") -> tuple[str, list]:
    """The rows one leg may read: this model, this encoder, the shop's filters, not ``like``.

    ``alias`` is the leg's table (``e`` the object rows, ``i`` the image rows; both carry the
    object's keys). Each leg adds its own status filter.
    """
    clauses = [f"{alias}.encoder_id = %s", f"{alias}.content_type_id = %s"]
    params: list = [int(query.encoder_id), int(query.content_type_id)]
    if query.base is not None:
        # Integer pks (most shops) meet the rows' bigint ``object_id``, which an index leads
        # from: a selective filter (1 % of the catalog) then reads its few hundred rows by key
        # instead of checking candidates one by one. Other pk types cast ``object_pk`` to the
        # pk's type, so each hit is still checked against the shop table's pk index.
        base_sql, base_params = query.base
        key = f"{alias}.object_id" if query.integer_pk else f"{alias}.object_pk::{query.pk_type}"
        clauses.append(f"{key} IN (SELECT base.pk FROM ({base_sql}) AS base(pk))")
        params.extend(base_params)
    if query.exclude_pk is not None:
        clauses.append(f"{alias}.object_pk <> %s")
        params.append(query.exclude_pk)
    return " AND ".join(clauses), params


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(v):.7g}" for v in vector) + "]"
