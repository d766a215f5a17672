"""System checks: configuration problems are reported by ``manage.py check``, never on import."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from clip_search.conf import clip_settings
from clip_search.registry import registry
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
def check_encoder_backends(app_configs: Any = None, **kwargs: Any) -> list:
    """An ONNX backend without onnxruntime would fail only when the first query arrives."""
    import importlib.util

    try:
        wanted = [name for name in ("TEXT_ENCODER", "IMAGE_ENCODER")
                  if clip_settings.values[name]["BACKEND"] == "onnx"]
    except ImproperlyConfigured:
        return []  # reported by check_settings
    if not wanted or all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx")):
        return []
    return [Error(
        f"CLIP_SEARCH[{name!r}]['BACKEND'] is 'onnx' but onnxruntime/onnx are not installed.",
        hint="pip install 'clip-search[onnx]', or set BACKEND to 'torch'.",
        id="clip_search.E005",
    ) for name in wanted]


@register("clip_search")
def check_model_files(app_configs: Any = None, **kwargs: Any) -> list:
    """Missing or unreadable weights: reported at deploy time, not by the first query.

    Cheap: the folder's files and each safetensors header, never the weights themselves. A
    pretrained tag that open_clip downloads is not checked here (that would need the network).
    """
    from pathlib import Path

    from clip_search.encoders.loader import EncoderLoadError, EncoderSpec, validate_spec
    from clip_search.weights import LOCAL_FOLDER_PREFIXES

    try:
        spec = EncoderSpec.from_settings()
    except ImproperlyConfigured:
        return []  # reported by check_settings
    try:
        validate_spec(spec)
        if spec.model.startswith(LOCAL_FOLDER_PREFIXES):  # local-dir: or hf-clip:
            files = sorted(Path(spec.model.split(":", 1)[1]).expanduser().glob("*.safetensors"))
        else:
            files = [Path(spec.pretrained)] if Path(spec.pretrained or "").suffix else []
            missing = [str(path) for path in files if not path.is_file()]
            if missing:
                raise EncoderLoadError(f"checkpoint file {missing[0]!r} does not exist.")
        _read_safetensors_headers([path for path in files if path.suffix == ".safetensors"])
    except EncoderLoadError as error:
        return [Error(f"The CLIP model cannot be loaded: {error}",
                      hint="Fix CLIP_SEARCH['MODEL'] / ['PRETRAINED'] or restore the files; search "
                      "falls back to keywords and no image is embedded until then.",
                      id="clip_search.E006")]
    return []


@register("clip_search")
def check_pretrained_applies(app_configs: Any = None, **kwargs: Any) -> list:
    """A PRETRAINED the shop set next to a MODEL that carries its own weights is ignored: said
    once here, instead of open_clip warning in every process (the loader drops it)."""
    from django.conf import settings

    from clip_search.weights import carries_own_weights

    user = getattr(settings, "CLIP_SEARCH", None) or {}
    model, pretrained = user.get("MODEL"), user.get("PRETRAINED")
    if not (isinstance(model, str) and isinstance(pretrained, str) and pretrained
            and carries_own_weights(model)):
        return []
    return [Warning(
        f"CLIP_SEARCH['PRETRAINED'] = {pretrained!r} is ignored: MODEL {model!r} carries its own "
        "weights.",
        hint="Remove PRETRAINED (it applies only to an open_clip model name such as 'ViT-B-32').",
        id="clip_search.W003",
    )]


def _read_safetensors_headers(paths: list) -> None:
    from safetensors import SafetensorError, safe_open

    from clip_search.encoders.loader import EncoderLoadError

    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except (OSError, SafetensorError) as error:
            raise EncoderLoadError(f"{str(path)!r} is not a readable safetensors file ({error}).") from error


@register("clip_search")
def check_registrations(app_configs: Any = None, **kwargs: Any) -> list:
    """Registrations are validated when made; those made by name in ``ready()`` keep their
    errors for this check instead of failing the import."""
    errors = [
        Error(str(error), hint="Name an existing field, or pass a callable.",
              id="clip_search.E002")
        for error in registry.errors
    ]
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


@register("clip_search")
def check_routers(app_configs: Any = None, **kwargs: Any) -> list:
    """Reads routed away from writes (a read replica) need ``ReadYourWritesRouter`` in front:
    else indexing, the save handlers and review decisions read what they are about to write
    from a standby that has not replayed it (clip_search.routers)."""
    from django.db import router

    from clip_search.models import Embedding
    from clip_search.routers import ReadYourWritesRouter

    split = [model for model in [Embedding, *(registration.model for registration in registry)]
             if router.db_for_read(model) != router.db_for_write(model)]
    if not split or (router.routers and isinstance(router.routers[0], ReadYourWritesRouter)):
        return []
    model = split[0]
    return [Warning(
        f"DATABASE_ROUTERS send reads of {model._meta.label} to {router.db_for_read(model)!r} and its "
        f"writes to {router.db_for_write(model)!r}: clip_search's indexing, save handlers and review "
        "decisions would read rows a replica has not replayed yet.",
        hint="Put 'clip_search.routers.ReadYourWritesRouter' first in DATABASE_ROUTERS "
             "(README, Operating it: Read replicas).",
        id="clip_search.W004",
    )]


@register("clip_search")
def check_tagging_labels(app_configs: Any = None, **kwargs: Any) -> list:
    """A LABELS import path that does not import would fail only when tags are first suggested.
    Imported, not called: the callable may read the shop's tables, which a check must not."""
    from django.utils.module_loading import import_string

    try:
        sets = clip_settings.TAGGING["SETS"]
    except ImproperlyConfigured:
        return []  # reported by check_settings
    errors = []
    for name, options in sets.items():
        path = options["LABELS"]
        if not isinstance(path, str):
            continue
        try:
            problem = None if callable(import_string(path)) else "is not callable"
        except ImportError as error:
            problem = f"cannot be imported ({error})"
        if problem:
            errors.append(Error(
                f"CLIP_SEARCH['TAGGING']['SETS'][{name!r}]['LABELS'] = {path!r} {problem}.",
                hint="Name a function returning the labels (a list, or a dict of labels to their words).",
                id="clip_search.E007"))
    return errors


@register("clip_search")
def check_storefront_api(app_configs: Any = None, **kwargs: Any) -> list:
    """A facet or sort in ``CLIP_SEARCH_API`` naming a field the model lacks would fail on the
    first storefront search (every one of them, as a 500): said here instead."""
    from django.conf import settings

    if not getattr(settings, "CLIP_SEARCH_API", None):
        return []
    try:
        from clip_search.api.conf import storefront_registration
        from clip_search.api.facets import storefront_facets, storefront_sorts
    except ImportError:  # the api extra is not installed: nothing serves these settings
        return []
    from django.core.exceptions import FieldDoesNotExist

    from clip_search.registry import resolve_path

    try:
        registration = storefront_registration()
        storefront_facets(registration)
        for name, sort in storefront_sorts(registration).items():
            for path in sort["order_by"]:
                if not isinstance(path, str):  # an expression (F("price").asc()) is the shop's own
                    continue
                try:
                    resolve_path(registration.model, path.lstrip("-"), allow_many=True)
                except (FieldDoesNotExist, ImproperlyConfigured) as error:
                    raise ImproperlyConfigured(f"CLIP_SEARCH_API['SORTS'][{name!r}]: {error}") from None
    except (ImproperlyConfigured, LookupError) as error:
        return [Error(f"CLIP_SEARCH_API: {error}",
                      hint="Facets need a 'field' path of the model (or 'tags'); sorts an 'order_by' "
                           "list of field paths (README, The REST API).",
                      id="clip_search.E008")]
    return []


@register("clip_search")
def check_image_device(app_configs: Any = None, **kwargs: Any) -> list:
    """A worker set up for a GPU that torch cannot see would embed on its CPU, many times
    slower, with only a log line to say so. torch is imported only when a device is set."""
    try:
        device = clip_settings.IMAGE_ENCODER["DEVICE"]
    except ImproperlyConfigured:
        return []  # reported by check_settings
    if device in (None, "cpu"):
        return []
    from clip_search.encoders.image import usable_device

    if usable_device(device).type != "cpu":
        return []
    return [Warning(
        f"CLIP_SEARCH['IMAGE_ENCODER']['DEVICE'] is {device!r}, but torch cannot use it in this "
        "process: images are embedded on the CPU.",
        hint="Install a torch build for this GPU, or set DEVICE only in the GPU workers' settings.",
        id="clip_search.W005",
    )]
