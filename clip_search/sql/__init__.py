"""The only raw SQL in clip_search: what the ORM cannot say. Always parameterised.

- here: the per-encoder partial HNSW index over an expression (``vector::vector(dim)``) on the
  image table; per-transaction planner settings for pgvector (``SET LOCAL hnsw.ef_search``);
  catalog look-ups for the system checks; ``sql.scope``: the rows every statement reads;
- ``sql.fused``: the fused hybrid search statement (CTEs, ``FULL JOIN`` and window functions
  over legs limited before they are joined, which the ORM cannot express);
- ``sql.lexicon``: the catalog's vocabulary and suggestions (aggregates over unnested arrays
  and tsvectors, trigram nearest neighbours);
- ``sql.writes``: the indexer's batch updates, one statement per table for a whole batch
  (``bulk_update``'s CASE per field and row cost as much CPU as decoding the images).
"""

from __future__ import annotations

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from clip_search.conf import clip_settings
from clip_search.sql.fused import (
    FusedHit,
    FusedQuery,
    FusedResult,
    fused_search,
    fused_statement,
    nearest_distance,
)
from clip_search.sql.scope import Scope


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


__all__ = ["FusedHit", "FusedQuery", "FusedResult", "Scope", "drop_vector_index", "ensure_vector_index",
           "extension_status", "fused_search", "fused_statement", "nearest_distance",
           "set_local_search_params", "vector_index_name"]
