"""The rows one statement may read: shared by the fused search, the lexicon and the facets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """The rows a statement may read: one model's, one encoder's, within the shop's queryset
    (its ``SELECT pk … WHERE <filters>``, or None when it has no filter), ``exclude_pk`` left out."""

    content_type_id: int
    encoder_id: int
    base: tuple[str, Sequence] | None = None
    integer_pk: bool = True  # the shop pk is an integer: rows are matched on their ``object_id``
    pk_type: str = "bigint"  # the shop pk's SQL type ("integer", "uuid", ...): object_pk is cast to it
    exclude_pk: str | None = None

    def clause(self, alias: str = "e") -> tuple[str, list]:
        """``alias`` is the table (``e`` the object rows, ``i`` the image rows; both carry the
        object's keys). Each statement adds its own status filter.

        Integer pks (most shops) meet the rows' bigint ``object_id``, which an index leads
        from: a selective filter (1 % of the catalog) then reads its few hundred rows by key
        instead of checking candidates one by one. Other pk types cast ``object_pk`` to the
        pk's type, so each hit is still checked against the shop table's pk index.
        """
        clauses = [f"{alias}.encoder_id = %s", f"{alias}.content_type_id = %s"]
        params: list = [int(self.encoder_id), int(self.content_type_id)]
        if self.base is not None:
            base_sql, base_params = self.base
            key = f"{alias}.object_id" if self.integer_pk else f"{alias}.object_pk::{self.pk_type}"
            clauses.append(f"{key} IN (SELECT base.pk FROM ({base_sql}) AS base(pk))")
            params.extend(base_params)
        if self.exclude_pk is not None:
            clauses.append(f"{alias}.object_pk <> %s")
            params.append(self.exclude_pk)
        return " AND ".join(clauses), params
