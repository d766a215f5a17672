"""Signal processors: they only enqueue work, after the transaction commits.

Swappable like haystack's ``HAYSTACK_SIGNAL_PROCESSOR``: ``CLIP_SEARCH["SIGNAL_PROCESSOR"]``
names the class. The default one marks the row ``pending`` and sends
``(app_label.model, str(pk))`` to Celery; when the broker is down the product is still
saved, the row stays ``pending`` with the reason, and the sweep picks it up later.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import models, transaction
from django.db.models.signals import post_delete, post_save
from django.utils.module_loading import import_string

from clip_search.conf import clip_settings
from clip_search.registry import Registration

logger = logging.getLogger(__name__)


class BaseSignalProcessor:
    """Connects post_save/post_delete of a registered model; subclasses decide what to do."""

    def connect(self, registration: Registration) -> None:
        uid = f"clip_search:{registration.label}"
        post_save.connect(self.handle_save, sender=registration.model, weak=False, dispatch_uid=uid)
        post_delete.connect(self.handle_delete, sender=registration.model, weak=False, dispatch_uid=uid)

    def disconnect(self, registration: Registration) -> None:
        uid = f"clip_search:{registration.label}"
        post_save.disconnect(sender=registration.model, dispatch_uid=uid)
        post_delete.disconnect(sender=registration.model, dispatch_uid=uid)

    def handle_save(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_delete(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass


class OnCommitSignalProcessor(BaseSignalProcessor):
    def handle_save(self, sender, instance, raw=False, update_fields=None, **kwargs):
        if raw:  # loaddata: nothing of the object is settled yet
            return
        from clip_search.registry import registry

        registration = registry.get(sender)
        if update_fields is not None and not _touches(registration, update_fields):
            return
        from clip_search.indexing import source_digest
        from clip_search.tasks import enqueue

        label, pk = registration.label, str(instance.pk)
        stored = _stored(instance)
        unchanged = stored is not None and stored["source_digest"] == source_digest(registration, instance)
        if unchanged and not callable(registration.image):  # a callable's bytes cannot be compared cheaply
            return
        new_image = stored is not None and stored["image_name"] != registration.image_name(instance)

        def on_commit() -> None:
            if new_image:  # unscored pixels must not reach the storefront, even for a moment
                hide_until_scored(instance)
            enqueue(label, [pk])

        transaction.on_commit(on_commit)

    def handle_delete(self, sender, instance, **kwargs):
        from clip_search.indexing import remove_object
        from clip_search.registry import registry

        registration, pk = registry.get(sender), str(instance.pk)
        transaction.on_commit(lambda: remove_object(registration, pk))


def _touches(registration: Registration, update_fields) -> bool:
    image = [registration.image] if isinstance(registration.image, str) else []
    roots = {path.split("__")[0] for path in (*image, *registration.text, *registration.keywords)}
    return bool(roots & set(update_fields)) or callable(registration.image)


def _stored(instance: models.Model) -> dict | None:
    """The active row's digest and image name (one indexed SELECT per save), if it is done."""
    from clip_search.models import Embedding

    return (Embedding.objects.for_object(instance).active()
            .exclude(status__in=[Embedding.Status.ERROR, Embedding.Status.PENDING])
            .values("source_digest", "image_name").first())


def hide_until_scored(instance: models.Model) -> None:
    """A new image replaces a scored one: pending (out of every storefront leg) until embedded."""
    from clip_search.models import Embedding

    shown = [Embedding.Status.INDEXED, Embedding.Status.NO_IMAGE]
    Embedding.objects.for_object(instance).active().filter(status__in=shown).update(
        status=Embedding.Status.PENDING)


_processor: BaseSignalProcessor | None = None


def get_processor() -> BaseSignalProcessor:
    global _processor
    if _processor is None:
        _processor = import_string(clip_settings.SIGNAL_PROCESSOR)()
    return _processor


def connect_registration(registration: Registration) -> None:
    get_processor().connect(registration)


def disconnect_registration(registration: Registration) -> None:
    get_processor().disconnect(registration)
