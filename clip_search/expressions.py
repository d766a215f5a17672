"""ORM expressions for the vector leg, in the style of django.contrib.postgres.search."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import F
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField


def typed_vector(dimension: int, column: str = "vector") -> Cast:
    """``vector::vector(dim)``: the exact expression each encoder's partial HNSW index covers."""
    return Cast(F(column), VectorField(dimensions=dimension))


def cosine_distance(dimension: int, query: Sequence[float], column: str = "vector") -> CosineDistance:
    """Cosine distance that the planner can answer from the encoder's HNSW index."""
    return CosineDistance(typed_vector(dimension, column), query)
