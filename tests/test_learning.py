"""The learning loop's library (issue 18): judgements from the log and from a file, the measures
and their intervals, training captions from clicks, and a model switch that only happens when
the candidate is better on held-out clicks."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from clip_search import evaluation, searchlog
from clip_search.evaluation import Judged, measure
from clip_search.models import EncoderModel, SearchRecord
from clip_search.registry import registry
from clip_search.search import search
from clip_search.training import _positives, clicked_catalog
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog

pytestmark = pytest.mark.usefixtures("empty_search_log")


def test_measures_on_a_ranking_worked_by_hand():
    gains = {"a": 2.0, "b": 1.0}
    perfect = measure(["a", "b", "c"], gains, k=2)
    assert perfect == {"ndcg@10": pytest.approx(1.0), "mrr": 1.0, "recall@k": 1.0}
    late = measure(["c", "d", "b"], gains, k=2)
    ideal = 3 + 1 / 1.5849625
    assert late["ndcg@10"] == pytest.approx((1 / 2.0) / ideal) and late["mrr"] == pytest.approx(1 / 3)
    assert late["recall@k"] == 0.0 and measure([], gains, 10)["mrr"] == 0.0


def test_bootstrap_intervals_are_deterministic_and_hold_the_mean():
    values = [0.0, 1.0] * 50
    low, high = evaluation.bootstrap(values)
    assert low < 0.5 < high and (low, high) == evaluation.bootstrap(values)
    assert evaluation.bootstrap([0.3] * 20) == (pytest.approx(0.3), pytest.approx(0.3))


def test_judged_files_are_read_and_a_bad_line_is_named(tmp_path):
    good = tmp_path / "judged.jsonl"
    good.write_text('{"q": "red mug", "rel": {"1": 2, "2": 1}}\n\n{"q": "hat", "rel": {"9": 1}}\n')
    assert evaluation.from_jsonl(good) == [Judged("red mug", {"1": 2.0, "2": 1.0}), Judged("hat", {"9": 1.0})]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "red mug", "rel": {"1": 2}}\n{"q": "hat"}\n')
    with pytest.raises(ValueError, match="line 2"):
        evaluation.from_jsonl(bad)


def test_the_hold_out_is_the_latest_searches():
    now = timezone.now()
    judged = [Judged(str(i), {"1": 1.0}, now - timedelta(days=10 - i)) for i in range(10)]
    earlier, later = evaluation.split_by_time(list(reversed(judged)), 0.2)
    assert [j.query for j in later] == ["8", "9"] and [j.query for j in earlier] == [str(i) for i in range(8)]


# --------------------------------------------------------------------------- on a catalog


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    specs = [spec for spec in generate_catalog(80, seed=13) if spec.is_public and not spec.is_unsafe]
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker, calibrate=True) as rows:
        yield rows


def shop_clicks(catalog, days: int = 10, *, colour_only: bool = False) -> list[tuple]:
    """Searches of "<colour> <category>" (or of the colour alone) logged as a shop's search()
    calls, each clicked on the first result of that colour (and kind), one day apart (the last
    ones are the hold-out)."""
    pairs = sorted({spec.pair for spec, _product in catalog})
    if colour_only:
        pairs = sorted({(colour, None) for colour, _category in pairs})
    logged = []
    for day, (colour, category) in enumerate(pairs[:days]):
        query = colour if colour_only else f"{colour} {category}"
        results = search(registry.get(Product).get_queryset(), text=query)
        search_id = searchlog.record(results)
        wanted = {str(p.pk) for s, p in catalog if s.colour == colour and category in (None, s.category)}
        row = SearchRecord.objects.get(pk=search_id)
        clicked = next((pk for pk in row.results if pk in wanted), None)
        if clicked:
            searchlog.add_event(search_id, "click", clicked)
        when = timezone.now() - timedelta(days=days - day)
        SearchRecord.objects.filter(pk=search_id).update(created_at=when)
        logged.append((query, clicked))
    return logged


def test_the_log_gives_judgements_with_their_gains(catalog, db):
    logged = shop_clicks(catalog)
    first = SearchRecord.objects.order_by("created_at").first()
    searchlog.add_event(first.pk, "purchase", first.events.get().object_pk)  # a purchase outranks its click
    judged = evaluation.from_log()
    assert [j.query for j in judged] == [query for query, clicked in logged if clicked]
    assert judged[0].gains == {first.events.first().object_pk: 3.0} and judged[0].model == "catalog.product"


def test_evaluate_scores_each_leg_and_the_fusion(catalog, db, tmp_path, capsys):
    shop_clicks(catalog)
    judged = evaluation.from_log()
    result = evaluation.evaluate(judged, registry.get(Product).get_queryset())
    assert set(result.values) == {"vector", "fulltext", "keyword", "fused"}
    for leg in result.values:
        for name in evaluation.MEASURES:
            assert len(result.values[leg][name]) == len(judged)
            assert 0.0 <= result.mean(leg, name) <= 1.0
    # The clicked product was among the results the shopper saw: the fusion finds it.
    assert result.mean("fused", "recall@k") == 1.0 and result.mean("fused", "mrr") > 0.5
    judged_file = tmp_path / "judged.jsonl"
    judged_file.write_text("".join(json.dumps({"q": j.query, "rel": j.gains}) + "\n" for j in judged))
    call_command("clip_eval", "--judged", str(judged_file), "--json", str(tmp_path / "out.json"))
    out = capsys.readouterr().out
    assert f"{len(judged)} judged queries" in out and "fused" in out and "ndcg@10" in out
    figures = json.loads((tmp_path / "out.json").read_text())
    assert figures[0]["means"]["fused"]["recall@k"] == 1.0


def test_clicks_become_captions_weighted_by_their_position(catalog, db):
    logged = shop_clicks(catalog)
    data = clicked_catalog(held_out=0.2)
    by_label = {example.label: example for example in data.train}
    earlier = [(query, clicked) for query, clicked in logged[:8] if clicked]
    for query, clicked in earlier:
        texts = [getattr(text, "text", text) for text in by_label[f"catalog.product:{clicked}"].texts]
        position = SearchRecord.objects.get(query=query).results.index(clicked) + 1
        assert texts.count(query) == min(5, max(1, round(position ** 0.7)))
    held = [(query, clicked) for query, clicked in logged[8:] if clicked]
    assert [query for query, _ in data.queries] == [query for query, _ in held]  # judged, not trained on
    for query, _clicked in held:
        assert all(query not in [getattr(t, "text", t) for t in example.texts] for example in data.train)


def test_products_clicked_for_the_same_query_are_positives_of_it(catalog, db):
    """Two products a shopper found good for one query are not pushed apart by the loss."""
    logged = shop_clicks(catalog)
    records = [(SearchRecord.objects.get(query=query), clicked) for query, clicked in logged[:8] if clicked]
    record, clicked = next((record, clicked) for record, clicked in records if len(record.results) > 1)
    query, other = record.query, next(pk for pk in record.results if pk != clicked)
    searchlog.add_event(record.pk, "click", other)
    data = clicked_catalog(held_out=0.2)
    by_label = {example.label: example for example in data.train}
    both = [by_label[f"catalog.product:{pk}"] for pk in (clicked, other)]
    unrelated = next(e for e in data.train if e.label not in {b.label for b in both})
    caption = next(t for t in both[0].texts if getattr(t, "text", None) == query)
    positives = _positives([e.tags | {e.label} for e in [*both, unrelated]], [caption.tags])
    assert positives[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert {label for _, label in data.queries} <= {example.label for example in data.gallery}


@pytest.fixture
def untrained_model(tmp_path_factory, demo_model_dir):
    """The demo model's architecture after one step of training: a model that knows nothing."""
    from clip_search.training import train
    from shop_demo.catalog.training import demo_training_args

    args = dataclasses.replace(demo_training_args(str(tmp_path_factory.mktemp("untrained"))), steps=1,
                               near_misses=0.0, extra={"train_size": 64, "gallery_per_pair": 1})
    return train(args, log=lambda line: None).output


def test_a_worse_model_is_refused_and_a_better_one_activated(catalog, db, untrained_model, demo_model_dir,
                                                              capsys):
    """Colours alone: every product of a colour has the word, so the pictures decide the order."""
    shop_clicks(catalog, colour_only=True)
    active = EncoderModel.objects.get(is_active=True)
    with pytest.raises(CommandError, match="not better") as refused:
        call_command("clip_reindex", "--model", f"local-dir:{untrained_model}", "--activate-if-better",
                     "--held-out", "0.5")
    assert "fused ndcg@10: active" in str(refused.value)
    assert EncoderModel.objects.get(is_active=True) == active  # nothing switched
    # Turned around: the untrained model active, the trained one the candidate.
    untrained = EncoderModel.objects.get(name=f"local-dir:{untrained_model}")
    EncoderModel.objects.update(is_active=False)
    EncoderModel.objects.filter(pk=untrained.pk).update(is_active=True)
    call_command("clip_reindex", "--model", f"local-dir:{demo_model_dir}", "--activate-if-better",
                 "--held-out", "0.5")
    assert "The candidate is better" in capsys.readouterr().out
    assert EncoderModel.objects.get(is_active=True) == active


def test_the_gate_judges_on_a_judged_file_when_given(catalog, db, untrained_model, tmp_path,
                                                     empty_search_log):
    """No click in the log: the judged file alone decides (every product of a colour is relevant
    to the colour's name, the truth the generator drew)."""
    judged = tmp_path / "colours.jsonl"
    colours = sorted({spec.colour for spec, _product in catalog})
    judged.write_text("".join(json.dumps({"q": colour, "rel": {str(p.pk): 1 for s, p in catalog
                                                              if s.colour == colour}}) + "\n"
                              for colour in colours))
    active = EncoderModel.objects.get(is_active=True)
    with pytest.raises(CommandError, match="no searches with clicks"):  # the default: held-out clicks
        call_command("clip_reindex", "--model", f"local-dir:{untrained_model}", "--activate-if-better",
                     stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(CommandError, match="not better") as refused:
        call_command("clip_reindex", "--model", f"local-dir:{untrained_model}", "--activate-if-better",
                     "--judged", str(judged), stdout=io.StringIO(), stderr=io.StringIO())
    figures = evaluation.evaluate(evaluation.from_jsonl(judged), registry.get(Product).get_queryset(),
                                  encoder=active, legs=("fused",))
    assert f"active {figures.mean('fused', 'ndcg@10'):.3f}" in str(refused.value)
    assert EncoderModel.objects.get(is_active=True) == active
