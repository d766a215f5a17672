"""Tags follow their products: deleted with them, and (``TAGGING["AFTER_EMBED"]``) suggested
as soon as the embed task has written them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.signals import post_delete

from clip_search.conf import clip_settings
from clip_search.models import EncoderModel, ProductTag
from clip_search.registry import Registration
from clip_search.tagging.suggest import suggest

logger = logging.getLogger(__name__)


def connect(registration: Registration) -> None:
    post_delete.connect(_delete_tags, sender=registration.model, weak=False,
                        dispatch_uid=f"clip_search.tags.{registration.label}")


def disconnect(registration: Registration) -> None:
    post_delete.disconnect(sender=registration.model, dispatch_uid=f"clip_search.tags.{registration.label}")


def _delete_tags(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    """In the delete's own transaction: the product and its tags go together or not at all."""
    content_type = ContentType.objects.db_manager(using).get_for_model(sender, for_concrete_model=False)
    ProductTag.objects.using(using).filter(content_type=content_type, object_pk=str(instance.pk)).delete()


def after_embed(registration: Registration, pks: Iterable[Any], encoder: EncoderModel) -> None:
    """Suggest tags for what the embed task wrote, when ``AFTER_EMBED`` asks and ``encoder`` is
    the one search reads (a model switch in progress tags after its switch, with clip_tag).
    A label set that cannot be read is logged: the embedding itself is done and stays."""
    if not clip_settings.TAGGING["AFTER_EMBED"] or not clip_settings.TAGGING["SETS"] or not encoder.is_active:
        return
    try:
        suggest(registration, pks, encoder=encoder)
    except ImproperlyConfigured as error:
        logger.error("clip_search: no tags suggested after embedding: %s", error)
