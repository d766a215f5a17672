"""Whole-catalog work behind ``manage.py clip_reindex``: full, missing-only and verify runs.

Batches go by primary key (``pk > last``), never OFFSET, and every batch commits on its own,
so a killed run loses at most one batch and a rerun resumes: unchanged images are reused by
their identity. ``asynchronous=True`` fans the batches out to Celery workers instead. Each
write is conditional on the object's current sources (``indexing.write``), so a run that
read a batch before a shop save never overwrites the newer image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone

from clip_search.indexing import Summary, embed_objects
from clip_search.models import Embedding, EncoderModel
from clip_search.registry import Registration
from clip_search.routers import primary_reads
from clip_search.streaming import embed_batches
from clip_search.tasks import enqueue, find_work
from clip_search.verify import delete_orphans, hide_unscored, verify_batches

Progress = Callable[[int], None]


def batches(registration: Registration, encoder: EncoderModel, *, missing_only: bool,
            batch_size: int) -> Iterator[list[str]]:
    last = None
    while True:
        pks = list(find_work(registration, encoder, missing_only=missing_only, after_pk=last)
                   .values_list("pk", flat=True)[:batch_size])
        if not pks:
            return
        last = pks[-1]
        yield [str(pk) for pk in pks]


def count_work(registration: Registration, encoder: EncoderModel, *, missing_only: bool) -> int:
    return find_work(registration, encoder, missing_only=missing_only).count()


@primary_reads()
def reindex_inline(registration: Registration, encoder: EncoderModel, *, missing_only: bool,
                   batch_size: int, force: bool = False, progress: Progress = lambda n: None) -> Summary:
    """Embed every batch here, the next one read and decoded while the model embeds this one
    (``clip_search.streaming``)."""
    summary = Summary()
    work = batches(registration, encoder, missing_only=missing_only, batch_size=batch_size)
    for done, batch_summary in embed_batches(registration, work, encoder, force=force):
        summary.add(batch_summary)
        progress(done)
    return summary


@primary_reads()
def reindex_async(registration: Registration, encoder: EncoderModel, *, missing_only: bool,
                  batch_size: int, force: bool = False, progress: Progress = lambda n: None,
                  poll: float = 1.0, timeout: float | None = None) -> Summary:
    """Queue every batch, then follow the rows the workers write until all are done."""
    started = timezone.now()
    queued: list[str] = []
    for pks in batches(registration, encoder, missing_only=missing_only, batch_size=batch_size):
        if not enqueue(registration.label, pks, encoder.pk, force):
            raise RuntimeError("The broker refused the tasks; nothing more was queued.")
        queued.extend(pks)
    return follow(registration, encoder, queued, started, progress=progress, poll=poll, timeout=timeout)


def follow(registration: Registration, encoder: EncoderModel, queued: list[str], started, *,
           progress: Progress = lambda n: None, poll: float = 1.0, timeout: float | None = None) -> Summary:
    """Wait until every queued object's row was written since ``started``; their summary."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    rows_ = Embedding.objects.filter(content_type=content_type, encoder=encoder, object_pk__in=queued)
    done, deadline = 0, (time.monotonic() + timeout) if timeout else None
    while done < len(queued):
        now_done = rows_.filter(updated_at__gte=started, stale=False).exclude(
            status=Embedding.Status.PENDING).count()
        progress(now_done - done)
        done = now_done
        if done < len(queued):
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"{len(queued) - done} objects not embedded after {timeout}s")
            time.sleep(poll)
    return summarize(rows_.filter(updated_at__gte=started))


@dataclass
class VerifyReport:
    checked: int = 0
    drifted: int = 0
    hidden: int = 0  # had an image the index had not scored: out of the storefront until it is
    orphans: int = 0  # rows of objects that no longer exist, deleted
    summary: Summary | None = None


@primary_reads()
def verify(registration: Registration, encoder: EncoderModel, *, batch_size: int,
           asynchronous: bool = False, progress: Progress = lambda n: None,
           timeout: float | None = None) -> VerifyReport:
    """Compare the whole catalog with its rows and redo what differs: embedded here batch by
    batch, or queued to the workers (``asynchronous``) and followed until written."""
    report, started, queued = VerifyReport(summary=Summary()), timezone.now(), []
    for batch in verify_batches(registration, encoder, batch_size=batch_size):
        report.checked += batch.checked
        report.drifted += len(batch.drifted)
        report.hidden += hide_unscored(registration, batch)
        if batch.drifted and asynchronous:
            if not enqueue(registration.label, batch.drifted, encoder.pk):
                raise RuntimeError("The broker refused the tasks; nothing more was queued.")
            queued.extend(map(str, batch.drifted))
        elif batch.drifted:
            report.summary.add(embed_objects(registration, registration.fetch(batch.drifted), encoder))
        progress(batch.checked)
    report.orphans = delete_orphans(registration)
    if queued:
        report.summary = follow(registration, encoder, queued, started, timeout=timeout)
    return report


def summarize(rows_) -> Summary:
    summary = Summary()
    names = {Embedding.Status.INDEXED: "indexed", Embedding.Status.FLAGGED: "flagged",
             Embedding.Status.REJECTED: "rejected", Embedding.Status.NO_IMAGE: "no_image",
             Embedding.Status.ERROR: "failed"}
    for status, pk, error in rows_.values_list("status", "object_pk", "error"):
        summary.counts[names.get(status, status)] += 1
        if status == Embedding.Status.ERROR:
            summary.errors[pk] = error
    return summary


def missing_coverage(encoder: EncoderModel, registrations) -> int:
    """Objects that still have no finished row for ``encoder``."""
    return sum(count_work(registration, encoder, missing_only=True) for registration in registrations)


@primary_reads()
def activate(encoder: EncoderModel, registrations) -> None:
    """Make ``encoder`` the one search reads, in one transaction, if its coverage is complete."""
    missing = missing_coverage(encoder, registrations)
    if missing:
        raise ValueError(f"Encoder {encoder} is missing {missing} objects; run clip_reindex "
                         f"--model {encoder.name!r} --missing first.")
    with transaction.atomic():
        EncoderModel.objects.select_for_update().filter(is_active=True).update(is_active=False)
        EncoderModel.objects.filter(pk=encoder.pk).update(is_active=True, activated_at=timezone.now())


@primary_reads()
def finish(registrations, encoder: EncoderModel, *, calibrate: bool = True) -> str:
    """After a reindex: build the vocabulary and suggestions of each model from its rows, and
    measure the encoder's relevance floor on its index (clip_search.calibration). Returns what
    was done, for the command's output."""
    from clip_search import calibration, lexicon

    done = []
    for registration in registrations:
        built = lexicon.refresh(registration, encoder)
        done.append(f"{registration.label}: {built.words} words, {built.suggestions} suggestions")
    if calibrate:
        measured = calibration.calibrate(encoder)
        if measured is not None:
            window = "none" if measured.window is None else f"{measured.window:.3f}"
            done.append(f"relevance floor {measured.noise_floor:.3f}, window {window} "
                        f"(over {measured.objects} indexed objects)")
    return "; ".join(done)
