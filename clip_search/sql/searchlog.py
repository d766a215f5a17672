"""Aggregates of the search log the ORM cannot say (an array indexed by another column)."""

from __future__ import annotations

from datetime import datetime

from django.db import connections


def clicks_by_found_by(start: datetime, end: datetime, using: str = "default") -> list[tuple[str, int]]:
    """Clicks of searches made in [start, end) by the clicked result's ``found_by`` letters."""
    with connections[using].cursor() as cursor:
        # PostgreSQL arrays count from 1, as positions do.
        cursor.execute("""
            SELECT coalesce(s.found_by[e.position], ''), count(*)
            FROM clip_search_searchevent e JOIN clip_search_searchrecord s ON s.id = e.search_id
            WHERE e.kind = 'click' AND s.created_at >= %s AND s.created_at < %s
            GROUP BY 1 ORDER BY 2 DESC, 1""", [start, end])
        return cursor.fetchall()
