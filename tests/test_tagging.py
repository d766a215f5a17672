"""Zero-shot product tagging on the demo catalog, with the project's trained model, on real PostgreSQL:
accuracy against the generator's truth, suggestions and staff decisions, what accepted tags feed
(the full-text leg, facets), the admin, the API and ``clip_tag``."""

from __future__ import annotations

import dataclasses
import io
import re
from collections import Counter

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from clip_search import lexicon, tagging
from clip_search.indexing import active_encoder, embed_objects
from clip_search.models import Embedding, ProductTag
from clip_search.registry import registry
from clip_search.search import search
from clip_search.tagging.suggest import product_vectors
from shop_demo.catalog.generator import CATEGORIES, COLOURS, generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog

CATALOG_SIZE = 500
Status = ProductTag.Status

# What a shop would write: its colours and its categories, with prompts of its own choosing.
TAGGING = {
    "SETS": {
        "colour": {"LABELS": list(COLOURS), "PROMPTS": ["a photo of a {} product", "a {} product",
                                                        "a product in {}"]},
        "category": {"LABELS": list(CATEGORIES)},  # the default prompts: "a photo of a {}", ...
    },
    "MIN_CONFIDENCE": 0.5,
}


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """500 drawn products, embedded once for the module (committed, then deleted)."""
    specs = generate_catalog(CATALOG_SIZE, seed=1905)
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as rows:
        yield rows


@pytest.fixture
def tag_settings(settings):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": TAGGING}
    return settings


@pytest.fixture
def registration():
    return registry.get(Product)


def tags_of(product, **filters) -> dict[tuple[str, str], ProductTag]:
    content_type = ContentType.objects.get_for_model(Product)
    return {(tag.label_set, tag.label): tag for tag in ProductTag.objects.filter(
        content_type=content_type, object_pk=str(product.pk), **filters)}


# --------------------------------------------------------------------------- accuracy


def test_top1_accuracy_against_the_generators_truth(catalog, db, tag_settings, registration, capsys):
    """Every product of the catalog tagged through ``tag_catalog``; the best label of each set
    compared with what the generator drew (``ProductSpec.colour`` and ``.category``). Chance is
    1/10 (colours) and 1/11 (categories)."""
    encoder = active_encoder()
    tagged = tagging.tag_catalog(registration, encoder, batch_size=128)
    assert tagged.products == CATALOG_SIZE and tagged.without_vectors == 0
    truth = {str(product.pk): spec for spec, product in catalog}
    content_type = ContentType.objects.get_for_model(Product)
    vectors = product_vectors(content_type, encoder, list(truth))
    matrix = np.vstack(list(vectors.values()))
    sets = tagging.label_sets()
    scored = tagging.Tagger(encoder, sets).score(matrix)
    one_prompt_sets = [dataclasses.replace(label_set, prompts=label_set.prompts[:1]) for label_set in sets]
    single = tagging.Tagger(encoder, one_prompt_sets).score(matrix)
    # CLIP (no logit bias): a softmax over each set's labels.
    assert all(sum(p for _, p in row[name]) == pytest.approx(1.0) for row in scored for name in row)
    lines = []
    for name in ("colour", "category"):
        wanted = [getattr(truth[key], name) for key in vectors]
        best = [row[name][0] for row in scored]  # (label, probability)
        top1 = np.mean([label == want for (label, _), want in zip(best, wanted, strict=True)])
        one_prompt = np.mean([row[name][0][0] == want for row, want in zip(single, wanted, strict=True)])
        stored = ProductTag.objects.filter(content_type=content_type, label_set=name,
                                           status=Status.SUGGESTED)
        assert stored.count() == len({tag.object_pk for tag in stored})  # one a product at most (0.5)
        right = np.mean([tag.label == getattr(truth[tag.object_pk], name) for tag in stored])
        sure = [(label == want) for (label, p), want in zip(best, wanted, strict=True) if p >= 0.9]
        confused = Counter((want, label) for (label, _), want in zip(best, wanted, strict=True)
                           if label != want)
        lines.append(f"{name}: top-1 {top1:.3f} ({one_prompt:.3f} with one prompt); at MIN_CONFIDENCE 0.5 "
                     f"suggested for {stored.count() / len(vectors):.0%}, {right:.3f} right; at 0.9 for "
                     f"{len(sure) / len(vectors):.0%}, {np.mean(sure):.3f} right; most confused (truth, "
                     f"suggested): {confused.most_common(3)}")
        assert top1 >= {"colour": 0.9, "category": 0.6}[name], lines[-1]
        assert right >= top1  # the threshold keeps the surer ones
    with capsys.disabled():
        print(f"\nZero-shot tagging, {len(vectors)} demo products (seed 1905), the demo model:\n  "
              + "\n  ".join(lines))


def test_a_siglip_model_scores_each_label_on_its_own_with_its_bias(catalog, db, settings, tmp_path,
                                                                    registration):
    """A model with a learned logit bias: sigmoid(scale · cos + bias) per label, no softmax across
    the set; the confidences are recomputed here from the model's own encoders."""
    from clip_search.encoders import EncoderSpec, ImageEncoder, TextEncoder, load_clip
    from clip_search.indexing import register_encoder
    from clip_search.zeroshot import ensemble
    from tests.catalog import create_product
    from tests.model_families import hub_offline, siglip_folder

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {
        "SETS": {"colour": {"LABELS": ["red", "blue", "green"], "PROMPTS": ["a {} product", "{}"]}},
        "MIN_CONFIDENCE": 0.0}}
    with hub_offline():
        folder = siglip_folder(tmp_path / "siglip")
        spec = EncoderSpec.from_settings().with_weights(f"local-dir:{folder}")
        encoder = register_encoder(spec, activate_if_none=False)  # beside the active demo model
        products = [create_product(s) for s in generate_catalog(3, seed=41)]
        embed_objects(registration, products, encoder)
        tagging.suggest(registration, [p.pk for p in products], encoder=encoder)
        clip = load_clip(spec)
        text = TextEncoder(clip, cache_size=0)
        labels = {label: ensemble(text.encode([f"a {label} product", label]))
                  for label in ("red", "blue", "green")}
        pictures = ImageEncoder(clip).encode_bytes([p.image.open("rb").read() for p in products])
    assert clip.logit_bias is not None
    for product, picture in zip(products, pictures, strict=True):
        tags = tags_of(product)
        assert set(tags) == {("colour", "red"), ("colour", "blue"), ("colour", "green")}  # MIN_CONFIDENCE 0
        for (_, label), tag in tags.items():
            cosine = float(picture.vector.astype(np.float64) @ labels[label])
            expected = 1 / (1 + np.exp(-(clip.logit_scale * cosine + clip.logit_bias)))
            assert tag.confidence == pytest.approx(expected, rel=1e-3, abs=1e-9)
            assert tag.encoder == encoder
        assert sum(tag.confidence for tag in tags.values()) != pytest.approx(1.0)  # not a softmax


# --------------------------------------------------------------------------- suggestions and decisions


def indexed(catalog):
    keys = set(Embedding.objects.filter(status=Embedding.Status.INDEXED).values_list("object_pk", flat=True))
    return [(spec, product) for spec, product in catalog if str(product.pk) in keys]


def test_suggestions_carry_confidences_and_staff_decisions_outlive_new_ones(catalog, db, tag_settings,
                                                                          registration, settings):
    spec, product = indexed(catalog)[0]
    tagged = tagging.suggest(registration, [product.pk])
    assert (tagged.products, tagged.suggested) == (1, 2)
    tags = tags_of(product)
    assert set(tags) == {("colour", spec.colour), ("category", spec.category)}
    assert all(tag.status == Status.SUGGESTED and 0.5 <= tag.confidence <= 1 for tag in tags.values())
    assert {tag.encoder for tag in tags.values()} == {active_encoder()}
    colour, category = tags[("colour", spec.colour)], tags[("category", spec.category)]
    staff = get_user_model().objects.create_user("tagger", is_staff=True)
    assert tagging.accept([colour], user=staff) == 1 and tagging.reject([category], user=staff) == 1
    assert tagging.accept([colour], user=staff) == 0  # already accepted: left as it was decided
    ProductTag.objects.filter(pk=colour.pk).update(confidence=0.61)

    # Scored again: the decisions stand, the rejected label is not suggested anew.
    tagging.suggest(registration, [product.pk])
    tags = tags_of(product)
    assert set(tags) == {("colour", spec.colour), ("category", spec.category)}
    assert tags[("colour", spec.colour)].status == Status.ACCEPTED
    assert tags[("colour", spec.colour)].confidence == 0.61  # what it was accepted on
    assert tags[("category", spec.category)].status == Status.REJECTED
    assert tags[("colour", spec.colour)].decided_by == staff and tags[("colour", spec.colour)].decided_at

    # Suggestions the model no longer makes are withdrawn; decisions are not.
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {**TAGGING, "MIN_CONFIDENCE": 1.0}}
    other_spec, other = indexed(catalog)[1]
    tagging.suggest(registration, [other.pk], sets=["colour"])
    assert not tags_of(other)
    assert tagging.suggest(registration, [product.pk]).withdrawn == 0
    assert set(tags_of(product)) == {("colour", spec.colour), ("category", spec.category)}


def test_a_decision_is_signalled_once_it_commits(catalog, db, tag_settings, registration,
                                                 django_capture_on_commit_callbacks):
    spec, product = indexed(catalog)[8]
    tagging.suggest(registration, [product.pk], sets=["colour"])
    received = []

    def receiver(sender, object_pk, tags, status, **kwargs):
        decided = [(tag.label, tag.status, tag.decided_by_name) for tag in tags]
        received.append((sender, object_pk, decided, status))

    tagging.tags_decided.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            tagging.accept(tags_of(product).values(), user=get_user_model().objects.create_user("tagger"))
            assert received == []  # not before the commit
        assert len(callbacks) == 1
    finally:
        tagging.tags_decided.disconnect(receiver)
    assert received == [(Product, str(product.pk), [(spec.colour, Status.ACCEPTED, "tagger")],
                         Status.ACCEPTED)]


def test_a_product_without_an_image_vector_gets_no_tags(catalog, db, tag_settings, registration):
    spec, product = indexed(catalog)[2]
    Embedding.objects.filter(object_pk=str(product.pk)).delete()
    tagged = tagging.suggest(registration, [product.pk])
    assert (tagged.products, tagged.without_vectors, tagged.suggested) == (0, 1, 0)
    assert not tags_of(product)


def shop_categories():
    """Labels kept in the shop's own table (LABELS names this function)."""
    from shop_demo.catalog.models import Category

    return Category.objects.order_by("slug").values_list("slug", flat=True)


def test_words_per_label_and_labels_from_the_shops_tables(catalog, db, settings, registration):
    """LABELS as a dict (the shop's label, the words that fill the prompts) or from a callable."""
    spec, product = next((s, p) for s, p in indexed(catalog) if s.category == "t-shirt")
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {"SETS": {
        "department": {"LABELS": {"Tops": ["t-shirt", "tee"], "Kitchen": ["mug", "cup"],
                                  "Seating": ["chair"]}},
        "kind": {"LABELS": "tests.test_tagging.shop_categories"},
    }}}
    tagging.suggest(registration, [product.pk])
    tags = tags_of(product)
    assert ("department", "Tops") in tags and ("kind", "t-shirt") in tags
    assert tagging.label_sets(["kind"])[0].labels == tuple(sorted(CATEGORIES))


# --------------------------------------------------------------------------- what accepted tags feed


def searched(text: str) -> list[int]:
    """The full-text leg alone: what the stored documents say."""
    return [hit.pk for hit in search(Product.objects.all(), text=text, weights={"vector": 0, "keyword": 0})]


def test_accepted_tags_join_the_full_text_document_and_the_vocabulary(catalog, db, settings, registration):
    """A word no product's text has: found once staff accepted it as a tag, and only then."""
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {
        "SETS": {"pattern": {"LABELS": ["paisley", "houndstooth"]}}, "DOCUMENT_WEIGHT": "B"}}
    spec, product = indexed(catalog)[3]
    tagging.suggest(registration, [product.pk])
    (tag,) = tags_of(product).values()  # a softmax over two labels: one of them is over 0.5
    assert searched(tag.label) == []  # a suggestion is not searchable

    tagging.accept([tag])
    row = Embedding.objects.get(object_pk=str(product.pk))
    assert tag.label in str(Embedding.objects.filter(pk=row.pk).values_list("search_document", flat=True)[0])
    lexicon.refresh(registration)  # the sweep's job once rows changed
    results = search(Product.objects.all(), text=tag.label, weights={"vector": 0, "keyword": 0})
    assert [hit.pk for hit in results] == [product.pk]
    assert results.search_info.corrected_query is None  # a catalog word now: never "corrected"
    # The worker's next write of the row keeps it (document_fields reads the accepted tags).
    embed_objects(registration, registration.fetch([product.pk]), active_encoder(), force=True)
    assert searched(tag.label) == [product.pk]

    tagging.reject([tag])
    assert searched(tag.label) == []


def test_no_document_weight_keeps_tags_out_of_search(catalog, db, settings, registration):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {
        "SETS": {"pattern": {"LABELS": ["paisley", "houndstooth"]}}, "DOCUMENT_WEIGHT": None}}
    spec, product = indexed(catalog)[3]
    tagging.suggest(registration, [product.pk])
    tagging.accept(tags_of(product).values())
    assert searched("paisley") == searched("houndstooth") == []


def test_a_facet_over_accepted_tags_counts_and_filters_in_the_api(catalog, db, tag_settings, registration,
                                                                  settings):
    settings.CLIP_SEARCH_API = {**settings.CLIP_SEARCH_API, "FACETS": {
        **settings.CLIP_SEARCH_API["FACETS"], "colour": {"tags": "colour", "title": "Colour"}}}
    mugs = [(spec, product) for spec, product in indexed(catalog)
            if spec.category == "mug" and spec.is_public]
    tagging.suggest(registration, [product.pk for _, product in mugs])
    accepted = mugs[:6]
    tagging.accept(ProductTag.objects.filter(label_set="colour",
                                             object_pk__in=[str(p.pk) for _, p in accepted]))
    expected: dict[str, set[int]] = {}
    for spec, product in accepted:  # the demo model's colours are right (accuracy test)
        expected.setdefault(spec.colour, set()).add(product.pk)

    api = APIClient()
    url = reverse("clip_search_api:search", kwargs={"version": "v1"})
    body = api.get(url, {"q": "mug", "limit": 100}).json()
    (colour,) = [facet for facet in body["facets"] if facet["name"] == "colour"]
    assert colour["kind"] == "terms" and colour["title"] == "Colour"
    hits = {result["id"] for result in body["results"]}
    counted = {value["value"]: value["count"] for value in colour["values"]}
    assert counted and counted == {name: len(pks & hits) for name, pks in expected.items() if pks & hits}

    name, pks = max(expected.items(), key=lambda item: len(item[1] & hits))
    narrowed = api.get(url, {"q": "mug", "colour": name, "limit": 100}).json()
    assert {result["id"] for result in narrowed["results"]} == pks & hits != set()
    (colour,) = [facet for facet in narrowed["facets"] if facet["name"] == "colour"]
    assert {value["value"]: value["selected"] for value in colour["values"]}[name] is True
    # A chosen label no hit has still shows, with 0, so the shopper can unchoose it.
    nothing = api.get(url, {"q": "mug", "colour": "ultraviolet"}).json()
    assert nothing["results"] == []
    (colour,) = [facet for facet in nothing["facets"] if facet["name"] == "colour"]
    assert {"value": "ultraviolet", "label": "ultraviolet", "count": 0, "selected": True} in colour["values"]


def test_a_tag_facet_names_a_configured_set(tag_settings):
    from django.core.exceptions import ImproperlyConfigured

    from clip_search.facets import declared

    with pytest.raises(ImproperlyConfigured, match="no label set 'material'"):
        declared(Product, {"material": {"tags": "material"}})
    with pytest.raises(ImproperlyConfigured, match="unknown option"):
        declared(Product, {"colour": {"tags": "colour", "field": "price"}})


# --------------------------------------------------------------------------- lifecycle and settings


def test_deleting_a_product_deletes_its_tags(catalog, db, tag_settings, registration):
    spec, product = indexed(catalog)[4]
    tagging.suggest(registration, [product.pk])
    assert tags_of(product)
    Product.objects.filter(pk=product.pk).delete()
    assert not tags_of(product)


@pytest.mark.parametrize("after_embed", [True, False])
def test_the_embed_task_suggests_tags_when_asked(catalog, db, settings, after_embed):
    from clip_search.tasks import embed_batch

    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {**TAGGING, "AFTER_EMBED": after_embed}}
    spec, product = indexed(catalog)[5]
    embed_batch.apply(args=("catalog.product", [str(product.pk)], None, True)).get()
    tags = tags_of(product)
    assert ({label_set for label_set, _label in tags}, ("colour", spec.colour) in tags) == (
        ({"colour", "category"}, True) if after_embed else (set(), False))


def test_clip_tag_tags_the_catalog_and_resumes_with_missing(catalog, db, tag_settings):
    out = io.StringIO()
    call_command("clip_tag", "--sets", "colour", "--batch-size", "200", stdout=out, stderr=io.StringIO())
    # Every product scored; a suggestion for those whose best colour reaches MIN_CONFIDENCE (all
    # but a few: how many depends on the demo model this machine trained).
    scored, stored = map(int, re.search(r"catalog.product: (\d+) scored, (\d+) suggestions stored",
                                        out.getvalue()).groups())
    assert scored == CATALOG_SIZE and stored >= 0.98 * CATALOG_SIZE, out.getvalue()
    assert ProductTag.objects.filter(label_set="colour").count() == stored
    assert not ProductTag.objects.filter(label_set="category").exists()
    # A killed run resumes: --missing scores only the products without a tag from this encoder ...
    tagged = list(ProductTag.objects.filter(label_set="colour").values_list("object_pk", flat=True)[:7])
    ProductTag.objects.filter(object_pk__in=tagged).delete()
    out = io.StringIO()
    call_command("clip_tag", "--missing", "--sets", "colour", stdout=out, stderr=io.StringIO())
    assert f"catalog.product: {7 + CATALOG_SIZE - stored} scored, 7 suggestions stored" in out.getvalue()
    # ... in each set: one added since is missing everywhere.
    out = io.StringIO()
    call_command("clip_tag", "--missing", stdout=out, stderr=io.StringIO())
    assert f"catalog.product: {CATALOG_SIZE} scored" in out.getvalue()
    with pytest.raises(CommandError, match="no set 'material'"):
        call_command("clip_tag", "--sets", "material", stdout=io.StringIO())


@pytest.mark.parametrize(("tagging_settings", "message"), [
    ({"SETS": {"colour": {"LABELS": []}}}, r"\['colour'\]\['LABELS'\] needs labels"),
    ({"SETS": {"colour": {"LABELS": ["red", "red"]}}}, "names a label twice"),
    ({"SETS": {"colour": {"LABELS": {"red": []}}}}, "maps each label to a non-empty list"),
    ({"SETS": {"colour": ["red"]}}, "must be a dict with LABELS"),
    ({"SETS": {"colour": {"LABELS": ["red"], "PROMPTS": ["a red photo"]}}}, r"\['PROMPTS'\] must be"),
    ({"SETS": {"colour": {"LABELS": ["red"], "MIN_CONFIDENCE": 2}}}, r"\['MIN_CONFIDENCE'\] must be in 0..1"),
    ({"PROMPTS": ["{} and {}"]}, r"\['TAGGING'\]\['PROMPTS'\] must be"),
    ({"DOCUMENT_WEIGHT": "E"}, "DOCUMENT_WEIGHT"),
    ({"SETZ": {}}, "unknown setting 'SETZ'"),
])
def test_bad_tagging_settings_are_named(settings, tagging_settings, message):
    from django.core.exceptions import ImproperlyConfigured

    from clip_search.conf import clip_settings

    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": tagging_settings}
    with pytest.raises(ImproperlyConfigured, match=message):
        clip_settings.TAGGING  # noqa: B018 - reading validates


def test_a_labels_callable_that_cannot_be_imported_is_named(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {"SETS": {"kind": {"LABELS": "shop.nowhere"}}}}
    with pytest.raises(ImproperlyConfigured, match=r"\['kind'\]\['LABELS'\]: No module named 'shop'"):
        tagging.label_sets()


# --------------------------------------------------------------------------- admin

CHANGELIST = "admin:catalog_product_changelist"
TAG_CHANGELIST = "admin:clip_search_producttag_changelist"


@pytest.fixture
def staff_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("staff", "staff@example.com", "pw"))
    return client


def suggest_action(client, products):
    return client.post(reverse(CHANGELIST), {"action": "clip_suggest_tags",
                                             "_selected_action": [p.pk for p in products]}, follow=True)


def test_suggest_tags_action_and_the_tags_column(catalog, staff_client, tag_settings):
    products = [product for _, product in indexed(catalog)[:30]]
    response = suggest_action(staff_client, products)
    suggested = ProductTag.objects.count()  # a colour for each, a category for most (MIN_CONFIDENCE)
    assert 50 < suggested <= 60
    assert (f"{suggested} tags suggested for 30 products (0 earlier suggestions withdrawn)"
            in response.content.decode())
    tagging.accept(ProductTag.objects.filter(object_pk=str(products[0].pk), label_set="colour"))
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(reverse(CHANGELIST), {"id__in": ",".join(str(p.pk) for p in products)})
    assert len(response.context["cl"].result_list) == 30
    assert len(queries) < 16, [q["sql"][:120] for q in queries]  # not a query per row
    html = response.content.decode()
    assert html.count('class="clip-tag clip-tag-suggested"') == suggested - 1
    assert html.count('class="clip-tag clip-tag-accepted"') == 1
    spec = next(spec for spec, product in catalog if product == products[0])
    assert 'class="clip-tag clip-tag-accepted" title="accepted, confidence ' in html
    assert f">colour: {spec.colour}</span>" in html
    content_type = ContentType.objects.get_for_model(Product)
    assert f'{reverse(TAG_CHANGELIST)}?content_type={content_type.pk}&amp;object_pk={products[0].pk}' in html


def test_the_tag_admin_accepts_and_rejects_in_bulk_and_records_who(catalog, staff_client, tag_settings,
                                                                   registration):
    products = [product for _, product in indexed(catalog)[:3]]
    tagging.suggest(registration, [p.pk for p in products])
    content_type = ContentType.objects.get_for_model(Product)
    listed = staff_client.get(reverse(TAG_CHANGELIST), {"content_type": content_type.pk,
                                                        "object_pk": products[0].pk})
    assert {tag.object_pk for tag in listed.context["cl"].result_list} == {str(products[0].pk)}
    assert f'src="{products[0].image.url}"' in listed.content.decode()

    colours = ProductTag.objects.filter(label_set="colour", object_pk__in=[str(p.pk) for p in products])
    response = staff_client.post(reverse(TAG_CHANGELIST), {
        "action": "accept_selected", "_selected_action": [tag.pk for tag in colours]}, follow=True)
    assert "3 tags accepted." in response.content.decode()
    response = staff_client.post(reverse(TAG_CHANGELIST), {
        "action": "accept_selected", "_selected_action": [tag.pk for tag in colours]}, follow=True)
    assert "3 selected tags were already accepted" in response.content.decode()
    assert {(tag.status, tag.decided_by.username) for tag in colours.all()} == {(Status.ACCEPTED, "staff")}

    category = ProductTag.objects.get(label_set="category", object_pk=str(products[1].pk))
    change = reverse("admin:clip_search_producttag_change", args=[category.pk])
    assert staff_client.post(change, {"decision": "reject"}).status_code == 302
    category.refresh_from_db()
    assert category.status == Status.REJECTED and category.decided_by_name == "staff"


def test_tag_decisions_and_suggestions_need_the_tag_permission(catalog, db, client, tag_settings,
                                                                registration):
    _, product = indexed(catalog)[0]
    tagging.suggest(registration, [product.pk])
    tag = ProductTag.objects.filter(object_pk=str(product.pk)).first()
    user = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_product", "change_product",
                                                                       "view_producttag"]))
    client.force_login(user)
    action_form = client.get(reverse(CHANGELIST)).context["action_form"]
    assert "clip_suggest_tags" not in dict(action_form.fields["action"].choices)
    ProductTag.objects.all().delete()
    suggest_action(client, [product])
    assert not ProductTag.objects.exists()

    tagging.suggest(registration, [product.pk])
    tag = ProductTag.objects.filter(object_pk=str(product.pk)).first()
    assert client.get(reverse(TAG_CHANGELIST)).status_code == 200  # may look ...
    response = client.post(reverse(TAG_CHANGELIST), {"action": "accept_selected",
                                                     "_selected_action": [tag.pk]})
    assert response.status_code == 200  # ... the list again: no such action for them
    tag.refresh_from_db()
    assert tag.status == Status.SUGGESTED
    user.user_permissions.add(Permission.objects.get(codename="change_producttag"))
    client.force_login(get_user_model().objects.get(pk=user.pk))
    action_form = client.get(reverse(CHANGELIST)).context["action_form"]
    assert "clip_suggest_tags" in dict(action_form.fields["action"].choices)


# --------------------------------------------------------------------------- REST API


def api_url(name: str, **kwargs) -> str:
    return reverse(f"clip_search_api:{name}", kwargs={"version": "v1", **kwargs})


def user_with(name: str, *codenames: str):
    user = get_user_model().objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return get_user_model().objects.get(pk=user.pk)  # no stale permission cache


def test_the_api_lists_suggests_and_decides_a_products_tags(catalog, db, tag_settings):
    spec, product = indexed(catalog)[6]
    api = APIClient()
    api.force_authenticate(user_with("tagger", "change_producttag"))
    assert api.get(api_url("product-tags", product_id=product.pk)).json() == {"product": str(product.pk),
                                                                              "tags": []}
    response = api.post(api_url("product-tags-suggest", product_id=product.pk))
    assert response.status_code == 200, response.content
    tags = response.json()["tags"]
    assert {tag["set"] for tag in tags} == {"colour", "category"}
    colour = next(tag for tag in tags if tag["set"] == "colour")
    assert colour["label"] == spec.colour and colour["status"] == "suggested" and colour["confidence"] >= 0.5
    assert colour["decided_by"] == "" and colour["encoder"] == active_encoder().pk

    response = api.post(api_url("tag-accept", tag_id=colour["id"]))
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["decided_by"]) == ("accepted", "tagger")
    category = next(tag for tag in tags if tag["set"] == "category")
    assert api.post(api_url("tag-reject", tag_id=category["id"])).json()["status"] == "rejected"
    listed = api.get(api_url("product-tags", product_id=product.pk), {"status": "accepted"}).json()
    assert [tag["id"] for tag in listed["tags"]] == [colour["id"]]
    assert [tag["set"] for tag in api.get(api_url("product-tags", product_id=product.pk),
                                          {"set": "category"}).json()["tags"]] == ["category"]


def test_the_tag_api_answers_missing_things_and_refuses_without_the_permissions(catalog, db, tag_settings,
                                                                                registration):
    from tests.test_api import assert_error

    spec, product = indexed(catalog)[7]
    tagging.suggest(registration, [product.pk])
    tag = ProductTag.objects.filter(object_pk=str(product.pk)).first()
    api = APIClient()
    assert api.get(api_url("product-tags", product_id=product.pk)).status_code in (401, 403)
    api.force_authenticate(user_with("clerk"))  # staff, no permission at all
    error = assert_error(api.get(api_url("product-tags", product_id=product.pk)), 403, "permission_denied")
    assert error["message"] == "You do not have permission to see product tags."
    api.force_authenticate(user_with("auditor", "view_producttag"))
    assert api.get(api_url("product-tags", product_id=product.pk)).status_code == 200
    for name, kwargs in (("product-tags-suggest", {"product_id": product.pk}),
                         ("tag-accept", {"tag_id": tag.pk}), ("tag-reject", {"tag_id": tag.pk})):
        error = assert_error(api.post(api_url(name, **kwargs)), 403, "permission_denied")
        assert error["message"] == "You do not have permission to suggest, accept or reject product tags."
    tag.refresh_from_db()
    assert tag.status == Status.SUGGESTED

    api.force_authenticate(user_with("tagger", "change_producttag"))
    assert_error(api.get(api_url("product-tags", product_id="123456789")), 404, "not_found")
    assert_error(api.get(api_url("product-tags", product_id="not-a-pk")), 404, "not_found")
    assert_error(api.post(api_url("tag-accept", tag_id=123456789)), 404, "not_found")
    assert_error(api.get(api_url("product-tags", product_id=product.pk), {"status": "maybe"}), 400, "invalid")
    Embedding.objects.filter(object_pk=str(product.pk)).delete()  # no vector to score
    assert_error(api.post(api_url("product-tags-suggest", product_id=product.pk)), 409, "not_indexed")


def test_the_tag_endpoints_are_in_the_schema(db):
    document = APIClient().get(api_url("schema"), {"format": "json"}).json()
    operations = {operation["operationId"]: (path, method, operation)
                  for path, methods in document["paths"].items() for method, operation in methods.items()}
    assert {name: operations[name][:2] for name in ("products_tags", "products_tags_suggest", "tags_accept",
                                                    "tags_reject")} == {
        "products_tags": ("/api/v1/products/{product_id}/tags/", "get"),
        "products_tags_suggest": ("/api/v1/products/{product_id}/tags/suggest/", "post"),
        "tags_accept": ("/api/v1/tags/{tag_id}/accept/", "post"),
        "tags_reject": ("/api/v1/tags/{tag_id}/reject/", "post")}
    listing = operations["products_tags"][2]
    assert {p["name"] for p in listing["parameters"]} == {"product_id", "status", "set"}
    assert set(listing["responses"]) >= {"200", "401", "403", "404"}
    assert "409" in operations["products_tags_suggest"][2]["responses"]


@pytest.mark.parametrize(("path", "problem"), [("shop.nowhere.labels", "cannot be imported"),
                                               ("shop_demo.catalog.generator.COLOURS", "is not callable")])
def test_manage_py_check_names_a_labels_path_that_cannot_work(settings, path, problem):
    from clip_search.checks import check_tagging_labels

    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": {"SETS": {"kind": {"LABELS": path}}}}
    (error,) = check_tagging_labels()
    assert error.id == "clip_search.E007" and problem in error.msg and "['kind']['LABELS']" in error.msg
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TAGGING": TAGGING}
    assert check_tagging_labels() == []
