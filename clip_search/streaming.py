"""A reindex as a pipeline: the model embeds one batch while the next is read and decoded and
the one before is written.

Done one after another, a batch's steps leave the model idle most of the time it is not
computing: reading files and the product rows (``indexing.plan``), decoding JPEGs, and the
write's round trips. Here the model runs in its own thread (torch releases the GIL), the
decodes in the image encoder's decode threads (Pillow releases it too), and the main thread
plans the next batch and writes the last one meanwhile: only the main thread touches the
database, so every write keeps ``indexing``'s rules (a product's sources read again under its
row's lock, a stale result dropped).

``IMAGE_ENCODER["PREFETCH_BATCHES"]`` batches are planned and decoding ahead of the one being
written (1 by default: the model always has its next batch ready; 0 runs the steps in turn).
Memory stays bounded by that: each batch in flight holds its new images' bytes and their
model-sized inputs, never full-size decoded pictures beyond one per decode thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from clip_search.conf import clip_settings
from clip_search.indexing import Plan, Summary, embed, pipeline_for, plan, start_decoding, write_plans
from clip_search.models import EncoderModel
from clip_search.registry import Registration


def embed_batches(registration: Registration, batches: Iterable[Sequence[str]], encoder: EncoderModel,
                  *, force: bool = False, prefetch: int | None = None) -> Iterator[tuple[int, Summary]]:
    """Plan, embed and write each batch of primary keys; yields ``(objects, summary)`` per batch
    as it is written, in order. ``prefetch``: batches ahead (default: the setting)."""
    ahead = clip_settings.IMAGE_ENCODER["PREFETCH_BATCHES"] if prefetch is None else prefetch
    pipeline_for(encoder)  # loaded here, not in the model thread
    in_flight: deque[tuple[Sequence[str], list[Plan], Future]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="clip-model") as model:
        for pks in batches:
            plans = plan(registration, registration.fetch(pks), encoder, force=force)
            decoding = start_decoding(plans, encoder)
            in_flight.append((pks, plans, model.submit(embed, plans, encoder, decoding)))
            while len(in_flight) > ahead:
                yield _write(registration, encoder, *in_flight.popleft())
        while in_flight:
            yield _write(registration, encoder, *in_flight.popleft())


def _write(registration: Registration, encoder: EncoderModel, pks: Sequence[str], plans: list[Plan],
           embedded: Future) -> tuple[int, Summary]:
    embedded.result()  # the model thread's exception, if any, is raised here
    return len(pks), write_plans(registration, encoder, plans)
