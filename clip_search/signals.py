"""Signal processors: they notice what a save can have changed and enqueue, after commit.

Swappable like haystack's ``HAYSTACK_SIGNAL_PROCESSOR``: ``CLIP_SEARCH["SIGNAL_PROCESSOR"]``
names the class. The default one watches each registered model and the related models its
images and text come from (``Registration.watchers``: a ``ProductImage`` row, a ``Brand``):

- A save compares the affected objects with what their rows were built from (``verify``'s
  digest: text and image storage names, no file read) and enqueues those that differ, after
  the transaction commits; the request never embeds.
- A save that brings a new image (a file uploaded in this save, or a storage name the row
  has not scored) also hides the objects' rows, inside the same transaction: the shop's
  commit publishes the new picture and its hiding together, so no unscored image is ever
  searchable. This is the one write a processor makes, and it is why it is not on commit.
- A deleted object's rows go on commit; a deleted related row re-embeds what it fed.

Signals are the fast path, not the guarantee: ``QuerySet.update()``, raw SQL and fixtures
send none, and the verify pass (``clip_reindex --verify``, the periodic sweep) finds those.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import models, transaction
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.utils.module_loading import import_string

from clip_search.conf import clip_settings
from clip_search.registry import Registration, Watcher
from clip_search.routers import primary_reads

logger = logging.getLogger(__name__)

# A related row feeding more objects than this (a brand of 20,000 products) enqueues them all
# without comparing each one in the request; the worker skips the unchanged ones.
COMPARE_AT_MOST = 100
# Set by pre_save on an instance whose image file is being uploaded by this save.
UPLOAD_FLAG = "_clip_search_upload"
AFFECTED_ATTRIBUTE = "_clip_search_affected"


class BaseSignalProcessor:
    """Connects the signals of a registration's model and its watchers to the handlers."""

    def connect(self, registration: Registration) -> None:
        model, uid = registration.model, f"clip_search:{registration.label}"
        pre_save.connect(self.handle_pre_save, sender=model, weak=False, dispatch_uid=uid)
        post_save.connect(self.handle_save, sender=model, weak=False, dispatch_uid=uid)
        post_delete.connect(self.handle_delete, sender=model, weak=False, dispatch_uid=uid)
        for watcher in registration.watchers():
            related_uid = f"{uid}:{watcher.model._meta.label_lower}"
            pre_save.connect(self.handle_pre_save, sender=watcher.model, weak=False,
                             dispatch_uid=f"clip_search:pre_save:{watcher.model._meta.label_lower}")
            post_save.connect(partial(self.handle_related_save, registration, watcher), sender=watcher.model,
                              weak=False, dispatch_uid=related_uid)
            pre_delete.connect(partial(self.handle_related_pre_delete, registration, watcher),
                               sender=watcher.model, weak=False, dispatch_uid=related_uid)
            post_delete.connect(partial(self.handle_related_delete, registration, watcher),
                                sender=watcher.model, weak=False, dispatch_uid=related_uid)

    def disconnect(self, registration: Registration) -> None:
        model, uid = registration.model, f"clip_search:{registration.label}"
        for signal in (pre_save, post_save, post_delete):
            signal.disconnect(sender=model, dispatch_uid=uid)
        for watcher in registration.watchers():
            related_uid = f"{uid}:{watcher.model._meta.label_lower}"
            for signal in (post_save, pre_delete, post_delete):
                signal.disconnect(sender=watcher.model, dispatch_uid=related_uid)

    def handle_pre_save(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_save(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_delete(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_related_save(self, registration: Registration, watcher: Watcher, sender: type[models.Model],
                            instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_related_pre_delete(self, registration: Registration, watcher: Watcher,
                                  sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        pass

    def handle_related_delete(self, registration: Registration, watcher: Watcher, sender: type[models.Model],
                              instance: models.Model, **kwargs: Any) -> None:
        pass


class OnCommitSignalProcessor(BaseSignalProcessor):
    def handle_pre_save(self, sender, instance, raw=False, **kwargs):
        if not raw:
            setattr(instance, UPLOAD_FLAG, _uploading(instance))

    @primary_reads()  # what the save wrote, not a standby's older copy (clip_search.routers)
    def handle_save(self, sender, instance, raw=False, update_fields=None, **kwargs):
        if raw:  # loaddata: nothing of the object is settled yet (verify finds fixtures)
            return
        from clip_search.registry import registry

        registration = registry.get(sender)
        roots = registration.read_roots()
        if update_fields is not None and roots is not None and not roots & set(update_fields):
            return
        # Callables may read rows the shop writes after this signal (Oscar saves a product's
        # attribute values right after it): the save is queued whatever the digest says now.
        self.changed(registration, [instance.pk], uploaded=getattr(instance, UPLOAD_FLAG, False),
                     always=roots is None)

    def handle_delete(self, sender, instance, **kwargs):
        from clip_search.indexing import remove_object
        from clip_search.registry import registry

        registration, pk = registry.get(sender), str(instance.pk)
        transaction.on_commit(lambda: remove_object(registration, pk))

    @primary_reads()
    def handle_related_save(self, registration, watcher, sender, instance, raw=False, update_fields=None,
                            **kwargs):
        if raw or (update_fields is not None and watcher.fields and not watcher.fields & set(update_fields)):
            return
        pks = watcher.affected(instance)
        if pks:
            self.changed(registration, pks, uploaded=watcher.images and getattr(instance, UPLOAD_FLAG, False))

    @primary_reads()
    def handle_related_pre_delete(self, registration, watcher, sender, instance, **kwargs):
        # Before the row goes: afterwards nothing leads from it to the objects it fed.
        affected = getattr(instance, AFFECTED_ATTRIBUTE, {})
        affected[registration.label] = watcher.affected(instance)
        setattr(instance, AFFECTED_ATTRIBUTE, affected)

    def handle_related_delete(self, registration, watcher, sender, instance, **kwargs):
        pks = getattr(instance, AFFECTED_ATTRIBUTE, {}).get(registration.label)
        if pks:
            _enqueue_on_commit(registration, pks)

    def changed(self, registration: Registration, pks: list[Any], *, uploaded: bool = False,
                always: bool = False) -> None:
        """Enqueue the objects whose sources differ from their rows (all of them: ``always``);
        hide those with a new image."""
        from clip_search.rows import hide_until_scored
        from clip_search.verify import compare

        if len(pks) > COMPARE_AT_MOST:
            drifted, unscored = list(pks), list(pks) if uploaded else []
        else:
            drift = compare(registration, registration.fetch(pks))
            drifted = [pk for pk, found in drift.items() if found]
            unscored = list(pks) if uploaded else [pk for pk, found in drift.items() if found.new_images]
        if unscored:  # in the shop's transaction (module docstring)
            hide_until_scored(registration.model, unscored)
        todo = list(dict.fromkeys([*(pks if always else drifted), *unscored]))
        if todo:
            _enqueue_on_commit(registration, todo)


def _enqueue_on_commit(registration: Registration, pks: list[Any]) -> None:
    from clip_search.tasks import enqueue

    keys = [str(pk) for pk in pks]
    transaction.on_commit(lambda: enqueue(registration.label, keys))


def _uploading(instance: models.Model) -> bool:
    """A file field of ``instance`` holds a file this save is about to write to storage."""
    for field in instance._meta.concrete_fields:
        if isinstance(field, models.FileField):
            file = getattr(instance, field.attname, None)
            if file and not getattr(file, "_committed", True):
                return True
    return False


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
