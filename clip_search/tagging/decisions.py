"""Staff decisions on tags, and what an accepted tag feeds: the product's search document.

Accepted labels join the product's stored full-text document at ``TAGGING["DOCUMENT_WEIGHT"]``
(``document_parts``, read by every write of the row), so the full-text leg finds a product by
a tag its text never said, and spelling correction knows the word. A decision rewrites the
stored document at once, under the product row's lock (``rows``' order: the product's rows,
then anything else), so a worker writing the row meanwhile never puts back an older document.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.dispatch import Signal
from django.utils import timezone

from clip_search import rows
from clip_search.conf import clip_settings
from clip_search.models import Embedding, ProductTag
from clip_search.registry import Registration, registry

# sender: the shop's model class; kwargs: object_pk, tags (the ProductTag rows decided), status.
# For a shop that keeps accepted labels in its own fields too (a product's colour, say).
tags_decided = Signal()

Status = ProductTag.Status


def accept(tags: Iterable[ProductTag], user=None) -> int:
    """Staff accept these tags: they feed the search document and the tag facets. Returns how
    many changed (a tag already accepted stays as it was decided)."""
    return _decide(tags, Status.ACCEPTED, user)


def reject(tags: Iterable[ProductTag], user=None) -> int:
    """Staff reject these tags: never suggested again for their product, out of search."""
    return _decide(tags, Status.REJECTED, user)


def _decide(tags: Iterable[ProductTag], status: str, user) -> int:
    by_product: dict[tuple[int, str], list[int]] = defaultdict(list)
    for tag in tags:
        by_product[(tag.content_type_id, tag.object_pk)].append(tag.pk)
    user = user if user is not None and user.pk else None  # AnonymousUser: nobody on record
    changed = 0
    for (content_type_id, object_pk), pks in by_product.items():
        changed += rows.retrying(lambda c=content_type_id, o=object_pk, p=pks: _decide_product(
            c, o, p, status, user))
    return changed


def _decide_product(content_type_id: int, object_pk: str, pks: list[int], status: str, user) -> int:
    product_rows = Embedding.objects.filter(content_type_id=content_type_id, object_pk=object_pk)
    list(product_rows.select_for_update().order_by("pk").values_list("pk", flat=True))  # the lock
    decided = list(ProductTag.objects.select_for_update().filter(pk__in=pks).exclude(status=status))
    if not decided:
        return 0
    fields = {"status": status, "decided_by": user, "decided_at": timezone.now(),
              "decided_by_name": user.get_username() if user is not None else ""}
    ProductTag.objects.filter(pk__in=[tag.pk for tag in decided]).update(**fields)
    for tag in decided:  # as stored, for the signal's receivers
        for name, value in fields.items():
            setattr(tag, name, value)
    model = ContentType.objects.get_for_id(content_type_id).model_class()
    if model is not None and registry.is_registered(model):
        refresh_document(registry.get(model), object_pk)
        transaction.on_commit(lambda: tags_decided.send(sender=model, object_pk=object_pk, tags=decided,
                                                        status=status))
    return len(decided)


def refresh_document(registration: Registration, object_pk: str) -> int:
    """Rewrite the stored document (every encoder's row) of one product from its current text
    and accepted tags; inside the caller's transaction, after it locked the rows."""
    from clip_search.indexing import document_fields

    found = registration.fetch([object_pk])
    if not found:
        return 0
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    # updated_at: the sweep rebuilds the vocabulary once rows changed since its last build.
    return Embedding.objects.filter(content_type=content_type, object_pk=object_pk).update(
        updated_at=timezone.now(), **document_fields(registration, found[0]))


def document_parts(registration: Registration, obj: models.Model) -> list[tuple[str, str]]:
    """The (weight, text) part the product's accepted tags add to its full-text document: the
    labels of the configured sets at ``DOCUMENT_WEIGHT``; none when that is None."""
    return documents_parts(registration, [obj.pk])[str(obj.pk)]


def documents_parts(registration: Registration, pks: Iterable) -> dict[str, list[tuple[str, str]]]:
    """``document_parts`` of several products, in one query (a batch write's)."""
    options, keys = clip_settings.TAGGING, [str(pk) for pk in pks]
    parts: dict[str, list[tuple[str, str]]] = {key: [] for key in keys}
    if options["DOCUMENT_WEIGHT"] is None or not options["SETS"]:
        return parts
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    labels: dict[str, list[str]] = defaultdict(list)
    accepted = ProductTag.objects.filter(content_type=content_type, object_pk__in=keys,
                                         status=Status.ACCEPTED, label_set__in=list(options["SETS"]))
    for key, label in accepted.order_by("label_set", "label").values_list("object_pk", "label"):
        labels[key].append(label)
    parts.update({key: [(options["DOCUMENT_WEIGHT"], " ".join(found))] for key, found in labels.items()})
    return parts
