"""The only raw SQL in clip_search: what the ORM cannot say. Always parameterised.

- the per-encoder partial HNSW index over an expression (``vector::vector(dim)``);
- per-transaction planner settings for pgvector (``SET LOCAL hnsw.ef_search``);
- catalog look-ups for the system checks.
"""

from __future__ import annotations

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
            f"CREATE INDEX IF NOT EXISTS {name} ON clip_search_embedding "
            f"USING hnsw ((vector::vector({int(dimension)})) vector_cosine_ops) "
            f"WITH (m = {int(hnsw['M'])}, ef_construction = {int(hnsw['EF_CONSTRUCTION'])}) "
            f"WHERE encoder_id = {int(encoder_id)}"
        )
    return True


def drop_vector_index(encoder_id: int, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {vector_index_name(encoder_id)}")


def set_local_search_params(ef_search: int, iterative_scan: str, using: str = "default") -> None:
    """pgvector planner settings for the current transaction only (pgvector-python #43)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(int(ef_search))])
        cursor.execute("SELECT set_config('hnsw.iterative_scan', %s, true)", [iterative_scan])


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
