"""System checks: configuration problems are reported by ``manage.py check``, never on import."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from clip_search.conf import clip_settings
from clip_search.registry import RegistrationError, registry
from clip_search.sql import extension_status


@register("clip_search")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    try:
        clip_settings.reload()
        clip_settings.values  # noqa: B018 - merging validates
    except ImproperlyConfigured as error:
        return [Error(str(error), hint="Fix settings.CLIP_SEARCH; see clip_search/conf.py for "
                      "every key and its default.", id="clip_search.E001")]
    return []


@register("clip_search")
def check_registrations(app_configs: Any = None, **kwargs: Any) -> list:
    errors = [
        Error(str(error), hint="Name an existing field, or pass a callable.",
              id="clip_search.E002")
        for error in registry.errors
    ]
    for registration in registry:
        try:
            registration.validate()
        except RegistrationError as error:
            errors.append(Error(str(error), hint="Name an existing field, or pass a callable.",
                                obj=registration.model, id="clip_search.E002"))
    if not len(registry) and not registry.errors:
        errors.append(Warning(
            "No model is registered with clip_search: nothing will be embedded or searchable.",
            hint="Call clip_search.register(Product, image=..., text=[...]) from your "
                 "AppConfig.ready().",
            id="clip_search.W001",
        ))
    return errors


@register("clip_search")
def check_database(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list:
    """pgvector and pg_trgm must exist on the server. Runs on every ``check`` because a
    missing pgvector otherwise surfaces only as a failed migration."""
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return [Error(
            f"clip_search needs PostgreSQL with pgvector; the default database is "
            f"{connection.vendor}.",
            hint="Point DATABASES['default'] at PostgreSQL with the pgvector extension.",
            id="clip_search.E003",
        )]
    problems = []
    try:
        for extension, package in (("vector", "pgvector"), ("pg_trgm", "contrib pg_trgm")):
            available, installed = extension_status(connection, extension)
            if not available and not installed:
                problems.append(Error(
                    f"The PostgreSQL extension {extension!r} ({package}) is not available on "
                    f"the database server {connection.settings_dict.get('HOST') or 'local'}.",
                    hint=f"Install {package} on the server (e.g. the postgresql-NN-pgvector "
                         "package), then run manage.py migrate.",
                    id="clip_search.E004",
                ))
    except DatabaseError as error:
        return [Warning(
            f"Could not ask the database which extensions it has: {error}".strip(),
            hint="Is the database running and reachable?",
            id="clip_search.W002",
        )]
    return problems
