"""The learning loop end to end on the demo shop (issue 18's "must show"): nDCG@10 before and after.

    cd /work/main && CLIP_SEARCH_DATA_DIR=<data dir> PYTHONPATH=. nice -n 10 .venv/bin/python \
        bench/learning_loop.py [--products 1200] [--shoppers 2500] [--seed 1] [--steps 600] \
        [--lr 1e-3] [--batch-size 64]      # ~16 min on 2 loaded cores (bench/README.md, session 8)

One run, in a throwaway database (``learning_loop_<pid>``) on the data dir's embedded PostgreSQL
(or ``DATABASE_URL``'s server), pictures in a temporary media folder, the new model in a
temporary folder; all three are removed at the end. The steps, each timed:

1. The demo shop: ``migrate``, ``demo_catalog --products N`` (the demo's 320-px pictures, every
   4th product with a second one), ``clip_reindex`` inline with the demo's own model
   (``CLIP_SEARCH["MODEL"]``, its lexicon built and its relevance floor calibrated).
2. The shop served by gunicorn (1 gthread worker × 4 threads, throttles lifted as
   ``DEMO_API_THROTTLE=off`` does) and the demo's simulated shoppers searching, clicking and
   buying through it over HTTP: what ``manage.py demo_shoppers --url … --shoppers N --seed S``
   runs (``shoppers.simulate`` with ``HttpShop``, then ``backdate`` over 14 days), called here
   so that the bench keeps each search's hidden intent.
3. ``clip_train --model local-dir:<active model> --source clicks --output <new> --steps --lr``:
   the catalog's captions plus the queries shoppers clicked on, the latest 20 % of the logged
   searches with clicks held out by time.
4. ``clip_reindex --model local-dir:<new> --activate-if-better``: the new encoder's rows, its
   calibration, and the switch only if its fused nDCG@10 on the held-out clicks is better beyond
   chance (the library's paired bootstrap).
5. Fused nDCG@10 of the model before and the model after (``clip_search.evaluation.evaluate``,
   its 95 % bootstrap intervals; the difference's interval paired, ``evaluation.compare``) on:
   the held-out clicks (what step 4 decides on); the held-out *intents* (every search in the
   held-out period, clicked or not, judged by its shopper's hidden intent: a product of the
   wanted colour and category has gain 2, or 1 when the shopper wanted another brand, as the
   simulator grades it), all of them and those with no word any product text uses ("crimson
   knapsack"); and the demo's fixed list of shopper-only queries (``evaluation_queries``: every
   shopper colour word × shopper noun whose colour and category some product has).

Targets (issue 18): +0.10 absolute nDCG@10 on held-out intents, and shopper-only-word queries
from about 0 to at least 0.5.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402

TARGET_GAIN = 0.10
TARGET_SHOPPER_ONLY = 0.5
STARTED = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=1200)
    parser.add_argument("--shoppers", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=1, help="the shoppers' seed")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    media = Path(tempfile.mkdtemp(prefix="clip-bench-loop-media-"))
    models = Path(tempfile.mkdtemp(prefix="clip-bench-loop-model-"))
    os.environ.update(DJANGO_SETTINGS_MODULE="shop_demo.settings", DJANGO_DEBUG="0",
                      DJANGO_MEDIA_ROOT=str(media), DEMO_API_THROTTLE="off")
    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import setup_databases, teardown_databases

    from shop_demo.embedded_db import DATA_DIR

    print(f"# The learning loop on the demo shop — {_util.machine()}; load average "
          f"{os.getloadavg()[0]:.1f} at start (other processes share these cores)")
    print(f"Data dir {DATA_DIR}; {args.products} products, {args.shoppers} shoppers (seed {args.seed}), "
          f"clip_train --steps {args.steps} --lr {args.lr:g} --batch-size {args.batch_size}")
    settings.DATABASES["default"]["TEST"]["NAME"] = f"learning_loop_{os.getpid()}"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress("migrate: a new database")
    databases = setup_databases(verbosity=0, interactive=False)
    timings["migrate (a new database)"] = time.perf_counter() - started
    try:
        run(args, models / "from-clicks", timings)
    finally:
        teardown_databases(databases, verbosity=0)
        shutil.rmtree(media, ignore_errors=True)
        shutil.rmtree(models, ignore_errors=True)
    print(f"\n# wall time {time.perf_counter() - STARTED:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f} at the end")


class Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> Timer:
        progress(self.name)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = time.perf_counter() - self.started


def run(args: argparse.Namespace, output: Path, timings: dict[str, float]) -> None:
    from django.conf import settings
    from django.core.management import CommandError, call_command
    from django.test import override_settings
    from searchlog import server

    from clip_search import evaluation
    from clip_search.models import EncoderModel
    from clip_search.registry import registry
    from shop_demo.catalog import shoppers

    quiet = open(os.devnull, "w")  # noqa: SIM115 - the commands' progress bars
    with Timer(timings, f"demo_catalog --products {args.products}"):
        call_command("demo_catalog", products=args.products, stdout=quiet)
    with Timer(timings, "clip_reindex (the demo model, inline)"):
        call_command("clip_reindex", stdout=quiet, stderr=quiet)
    before = EncoderModel.objects.get(is_active=True)

    with Timer(timings, f"demo_shoppers: {args.shoppers} shoppers through gunicorn"):
        with server(True) as shop:
            url = f"http://127.0.0.1:{shop.connection.port}"
            searches = shoppers.simulate(
                lambda number: shoppers.HttpShop(url, shoppers.user_agent(number)),
                shoppers=args.shoppers, seed=args.seed, log=lambda line: progress(line.strip()))
            found = shoppers.backdate(searches)
    logged = sum(bool(search.search_id) for search in searches)
    print(f"\n## The shoppers ({found} of {logged} logged searches backdated over 14 days)\n")
    print(shoppers.summary(searches))

    train_out = io.StringIO()
    with Timer(timings, f"clip_train --source clicks --steps {args.steps}"):
        call_command("clip_train", "--model", before.name, "--source", "clicks", "--output", str(output),
                     "--steps", str(args.steps), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
                     stdout=train_out)
    lines = train_out.getvalue().splitlines()
    print("\n## clip_train\n\n" + "\n".join(
        f"    {line}" for line in lines if line.startswith(("Training on", "held-out")) or
        line.startswith(f"step {args.steps}/")))

    gate_out = io.StringIO()
    with Timer(timings, "clip_reindex --model <new> --activate-if-better"):
        try:
            call_command("clip_reindex", "--model", f"local-dir:{output}", "--activate-if-better",
                         stdout=gate_out, stderr=quiet)
            verdict = next(line for line in gate_out.getvalue().splitlines() if "candidate is better" in line)
        except CommandError as error:
            verdict = str(error)
    after = EncoderModel.objects.get(name=f"local-dir:{output}")
    after.refresh_from_db()
    activated = after.is_active
    print(f"\n## clip_reindex --activate-if-better: {'activated' if activated else 'NOT activated'}\n\n"
          f"    {verdict}")

    with Timer(timings, "evaluation: before and after, every judged set"):
        queryset = registry.get("catalog.product").get_queryset()
        sets = judged_sets(searches, queryset)
        rows = []
        for name, judged in sets.items():
            old = evaluation.evaluate(judged, queryset, encoder=before, legs=("fused",))
            new = evaluation.evaluate(judged, queryset, encoder=after, legs=("fused",))
            rows.append((name, len(judged), old, new, evaluation.compare(old, new)))
        # Why shopper-only queries score what they do: a query with no catalog word keeps only
        # the vector hits above the encoder's noise floor and within its window of the best hit.
        name = "every shopper-only query (colour × noun)"
        for label, leg, relevance in (("vector leg, no floor or window", "vector", (None, None)),
                                      ("fused, no floor", "fused", (None, "auto")),
                                      ("fused, no window", "fused", ("auto", None))):
            with override_settings(CLIP_SEARCH={**settings.CLIP_SEARCH, "SEARCH": {
                    "RELEVANCE": {"FLOOR": relevance[0], "WINDOW": relevance[1]}}}):
                old, new = (evaluation.evaluate(sets[name], queryset, encoder=encoder, legs=(leg,))
                            for encoder in (before, after))
            rows.append((f"{name}: {label}", len(sets[name]), old, new,
                         evaluation.compare(old, new, leg=leg)))

    # The other half of the loop: the synonyms the clicks suggest (click_synonyms), suggested from
    # the searches before the held-out ones only, all accepted as staff would, both models again.
    with Timer(timings, "synonyms suggested by clicks, accepted, evaluated"):
        suggested = suggested_synonyms(sets["held-out clicks (the gate's judgements)"], before)
        print(f"\n## Synonyms suggested by the clicks before the hold-out ({len(suggested)})\n\n    "
              + ", ".join(candidate.line for candidate in suggested))
        for name in ("held-out intents, all", "held-out intents, no catalog word",
                     "every shopper-only query (colour × noun)"):
            old = evaluation.evaluate(sets[name], queryset, encoder=before, legs=("fused",))
            new = evaluation.evaluate(sets[name], queryset, encoder=after, legs=("fused",))
            rows.append((f"{name}, with the suggested synonyms", len(sets[name]), old, new,
                         evaluation.compare(old, new)))
    report(rows, activated, timings)


def suggested_synonyms(held_out: list, encoder) -> list:
    """What ``click_synonyms`` suggests from the days before the first held-out click, accepted."""
    from datetime import timedelta

    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone

    from clip_search import synonyms
    from clip_search.analytics import Period
    from clip_search.click_synonyms import candidates
    from shop_demo.catalog.models import Product

    last = timezone.localtime(min(item.at for item in held_out)).date() - timedelta(days=1)
    found = candidates(Period(last - timedelta(days=30), last), ContentType.objects.get_for_model(Product),
                       encoder)
    synonyms.import_file("\n".join(candidate.line for candidate in found))
    synonyms.forget()
    return found


def judged_sets(searches: list, queryset) -> dict[str, list]:
    """The judged queries, by set: the held-out clicks (as the gate reads them) and the held-out
    intents (every simulated search from the first held-out click on), all and shopper-only."""
    from clip_search import evaluation
    from shop_demo.catalog import shoppers
    from shop_demo.catalog.shopper_words import evaluation_queries, words_of

    _earlier, clicks = evaluation.split_by_time(evaluation.from_log(), 0.2)
    cut = min(item.at for item in clicks)
    products = shoppers.seen_products()
    catalog_words = catalog_vocabulary(queryset)
    intents, shopper_only = [], []
    for search in searches:
        if not search.search_id or search.at < cut:
            continue
        gains = {pk: float(grade) for pk, seen in products if (grade := seen.grade(search.intent))}
        judged = evaluation.Judged(search.phrase.text, gains, search.at, search.search_id)
        intents.append(judged)
        if not set(words_of(search.phrase.text)) & catalog_words:
            shopper_only.append(judged)
    lexicon = [evaluation.Judged(row["q"], {pk: float(g) for pk, g in row["rel"].items()})
               for row in evaluation_queries(products)]
    assert not any(set(words_of(item.query)) & catalog_words for item in lexicon)
    return {"held-out clicks (the gate's judgements)": clicks,
            "held-out intents, all": intents,
            "held-out intents, no catalog word": shopper_only,
            "every shopper-only query (colour × noun)": lexicon}


def catalog_vocabulary(queryset) -> set[str]:
    """Every word of every product's searchable text and keywords, as a word search splits them."""
    from clip_search.registry import registry
    from shop_demo.catalog.shopper_words import words_of

    registration = registry.get(queryset.model)
    words: set[str] = set()
    for obj in queryset.select_related(*registration.related_paths()).iterator(chunk_size=500):
        for text in [text for _, text in registration.text_parts(obj)] + registration.keyword_values(obj):
            words.update(words_of(text))
    return words


def report(rows: list, activated: bool, timings: dict[str, float]) -> None:
    print("\n## Fused nDCG@10, the demo model (before) and the model trained on clicks (after)\n")
    print("95 % bootstrap intervals over queries (`evaluation.bootstrap`); the difference's is paired "
          "(`evaluation.compare`).\n")
    print("| judged queries | queries | before | after | difference | target |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, count, old, new, comparison in rows:
        target = ""
        if name == "held-out intents, all":
            gain = comparison.candidate - comparison.active
            target = f"+{TARGET_GAIN:.2f}: {'PASS' if gain >= TARGET_GAIN else 'MISS'}"
        elif name.endswith(("no catalog word", "(colour × noun)")):
            target = f"≥ {TARGET_SHOPPER_ONLY}: " + ("PASS" if comparison.candidate >= TARGET_SHOPPER_ONLY
                                                    else "MISS")
        elif name.endswith("with the suggested synonyms") and "intents, all" not in name:
            target = (f"≥ {TARGET_SHOPPER_ONLY}: before {_met(comparison.active)}, "
                      f"after {_met(comparison.candidate)}")
        difference = comparison.candidate - comparison.active
        print(f"| {name} | {count} | {_cell(old)} | {_cell(new)} | {difference:+.3f} "
              f"[{comparison.low:+.3f}, {comparison.high:+.3f}] | {target} |")
    print(f"\nActivated: {'yes' if activated else 'no'}.\n")
    print("| step | seconds |\n|---|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.0f} |")


def _met(value: float) -> str:
    return "PASS" if value >= TARGET_SHOPPER_ONLY else "MISS"


def _cell(result) -> str:
    leg = next(iter(result.values))
    low, high = result.interval(leg, "ndcg@10")
    return f"{result.mean(leg, 'ndcg@10'):.3f} [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
