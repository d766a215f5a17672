"""ORM expressions for the vector leg, in the style of django.contrib.postgres.search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import F, Field, Func
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField


def typed_vector(dimension: int, column: str = "vector") -> Cast:
    """``vector::vector(dim)``: the exact expression each encoder's partial HNSW index covers."""
    return Cast(F(column), VectorField(dimensions=dimension))


def cosine_distance(dimension: int, query: Sequence[float], column: str = "vector") -> CosineDistance:
    """Cosine distance that the planner can answer from the encoder's HNSW index."""
    return CosineDistance(typed_vector(dimension, column), query)


class ValueAt(Func):
    """``(values)[array_position(keys, key)]``: a per-row value looked up by the row's key.

    How search results carry their fused score and ranks into the shop's own queryset:
    two bound arrays, no CASE with one branch per hit, no string-built SQL.
    """

    template = "(%(values)s::%(db_type)s[])[array_position(%(keys)s::text[], (%(expressions)s)::text)]"

    def __init__(self, key: Any, keys: Sequence[str], values: Sequence[Any], db_type: str,
                 output_field: Field) -> None:
        if db_type not in ("float8", "int8", "bool"):
            raise ValueError(f"unsupported array type {db_type!r}")
        super().__init__(key, output_field=output_field)
        self.extra.update(db_type=db_type)
        self.keys, self.values = list(keys), list(values)

    def as_sql(self, compiler, connection, **extra_context):
        sql, params = super().as_sql(compiler, connection, keys="%s", values="%s", **extra_context)
        # The template puts ``values`` first and ``keys`` second, before the key expression.
        return sql, (self.values, self.keys, *params)
