"""clip_search in a real django-oscar 4.2 shop (tests/oscar_shop): Oscar's own dashboard views,
its admin, its models; the registration ``clip_search.contrib.oscar`` makes."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from clip_search.models import Embedding
from clip_search.registry import registry
from clip_search.search import search
from tests.broker import producer, wait_for
from tests.oscar.conftest import Product, StockRecord, dashboard_form, embed, oscar_product, upload

Status = Embedding.Status


def found(queryset, **query) -> list[int]:
    return [p.pk for p in search(queryset, **query)]


def test_the_registration_reads_oscar_the_way_oscar_shows_it(shop, pictures):
    parent = oscar_product(shop, "Polo", pictures.safe[:2], "POLO-P", structure="parent")
    child = oscar_product(shop, "", [], "POLO-RED", structure="child", parent=parent, product_class=None,
                          upc="5012345678900")
    child.attr.colour = shop["options"]["Red"]
    child.attr.save()
    registration = registry.get(Product)
    fetched = {product.pk: product for product in registration.fetch([parent.pk, child.pk])}
    parent, child = fetched[parent.pk], fetched[child.pk]
    # A variant without pictures has its parent's, and its parent's title.
    parent_pictures = [image.original.name for image in parent.images.all()]
    assert [image.name for image in registration.source_images(child)] == parent_pictures
    assert registration.text_parts(child)[:2] == [("A", "Polo"), ("B", "Red")]
    # The parent listing carries its variants' identifiers: a variant's SKU finds what Oscar lists.
    assert set(registration.keyword_values(parent)) == {"POLO-P", "POLO-RED", "5012345678900"}
    embed(parent, child)
    browsable = registration.get_queryset()
    assert found(browsable, text="POLO-RED") == [parent.pk]
    assert child.pk not in found(browsable, text="Polo")  # variants are not listed, as in Oscar


@pytest.mark.django_db(transaction=True)
def test_a_product_made_in_oscars_dashboard_is_indexed_with_its_image_and_re_embedded_when_replaced(
        shop, pictures, redis_url, start_worker):
    client = Client()
    client.force_login(shop["staff"])
    with producer(redis_url):
        worker = start_worker(redis_url)
        form = dashboard_form(shop, **{"images-TOTAL_FORMS": "1", "images-0-display_order": "0",
                                       "images-0-original": upload(pictures.safe[0], "a.png")})
        response = client.post("/dashboard/catalogue/products/create/t-shirt/", form)
        assert response.status_code == 302, response.content[:2000]
        product = Product.objects.get(title="Plain shirt")
        # The product, its attribute values, image and stock record commit together
        # (ATOMIC_REQUESTS), then the task runs: indexed with all of them, no race.
        wait_for(lambda: getattr(product.clip_embedding, "status", None) == Status.INDEXED, 60,
                 f"the worker\n{worker.log()}")
        row = product.clip_embedding
        assert [i.name for i in row.images.all()] == [product.images.get().original.name]
        assert "nordhaus" in row.keyword_tokens and "nh-shirt-1" in row.keyword_tokens
        assert "cotton" in row.search_document and "red" in row.search_document

        image = product.images.get()
        form = dashboard_form(shop, **{
            "images-TOTAL_FORMS": "2", "images-INITIAL_FORMS": "1",
            "images-0-id": str(image.pk), "images-0-product": str(product.pk), "images-0-DELETE": "on",
            "images-0-display_order": "0",
            "images-1-original": upload(pictures.knife[0], "b.png"), "images-1-display_order": "1",
            "productcategory_set-INITIAL_FORMS": "1",
            "productcategory_set-0-id": str(product.productcategory_set.get().pk),
            "productcategory_set-0-product": str(product.pk),
            "stockrecords-INITIAL_FORMS": "1", "stockrecords-0-id": str(product.stockrecords.get().pk),
            "stockrecords-0-product": str(product.pk)})
        response = client.post(f"/dashboard/catalogue/products/{product.pk}/", form)
        assert response.status_code == 302, response.content[:2000]
        new = product.images.get()
        wait_for(lambda: list(product.clip_embedding.images.values_list("name", flat=True))
                 == [new.original.name] and product.clip_embedding.status != Status.PENDING, 60,
                 f"the replaced image\n{worker.log()}")
    assert product.clip_embedding.status == Status.FLAGGED  # the new picture is a knife


def test_a_stock_record_of_a_variant_re_queues_its_parent(shop, pictures, settings):
    from clip_search.signals import get_processor

    parent = oscar_product(shop, "Polo", pictures.safe[:1], "POLO-P", structure="parent")
    child = oscar_product(shop, "", [], "POLO-BLUE", structure="child", parent=parent, product_class=None)
    embed(parent, child)
    watchers = {w.model: w for w in registry.get(Product).watchers()}
    record = StockRecord(product=child, partner=shop["partner"], partner_sku="POLO-BLUE-XL", price="1")
    assert set(watchers[StockRecord].affected(record)) == {child.pk, parent.pk}
    assert get_processor() is not None


def test_the_admin_changelist_of_oscars_product_admin_runs_hybrid_search(shop, pictures):
    product = oscar_product(shop, "Striped sailor shirt", pictures.safe[:1], "SAILOR-1")
    embed(product)
    client = Client()
    client.force_login(shop["staff"])
    response = client.get("/admin/catalogue/product/", {"q": "SAILOR-1"})
    assert response.status_code == 200
    html = response.content.decode()
    assert product.images.get().original.url in html  # the thumbnail column, from the related image
    assert "clip-status-indexed" in html and list(response.context["cl"].result_list) == [product]


def test_api_results_carry_the_first_pictures_url(shop, pictures):
    product = oscar_product(shop, "Linen shirt", pictures.safe[:2], "LINEN-1")
    embed(product)
    body = APIClient().get("/api/v1/search/", {"q": "LINEN-1"}).json()
    assert body["results"][0]["pk"] == product.pk
    assert body["results"][0]["image"].endswith(product.images.order_by("display_order")[0].original.url)


def catalogue(shop, pictures) -> dict:
    """Three products, one of another product class (a facet), with prices (another facet)."""
    from oscar.core.loading import get_model

    book = get_model("catalogue", "ProductClass").objects.create(name="Book", slug="book")
    products = {
        "red": oscar_product(shop, "Red linen shirt", pictures.safe[:1], "SHIRT-RED"),
        "blue": oscar_product(shop, "Blue linen shirt", pictures.safe[1:2], "SHIRT-BLUE"),
        "book": oscar_product(shop, "Linen shirts: a history", pictures.safe[2:3], "BOOK-1",
                              product_class=book),
    }
    StockRecord.objects.filter(product=products["blue"]).update(price="45.00")
    embed(*products.values())
    return products


def test_oscars_search_page_shows_hybrid_results_with_its_facets_sorting_and_pagination(shop, pictures):
    products = catalogue(shop, pictures)
    client = Client()
    response = client.get("/search/", {"q": "linen shirt"})
    assert response.status_code == 200
    assert "oscar/search/results.html" in [t.name for t in response.templates]
    page = response.context["page"]
    assert {item.object.pk for item in page.object_list} == {p.pk for p in products.values()}
    assert response.context["paginator"].count == 3
    facets = response.context["facet_data"]
    assert {r["name"]: r["count"] for r in facets["product_class"]["results"]} == {"T-shirt": 2, "Book": 1}
    prices = {str(r["name"]): r["count"] for r in facets["price_range"]["results"]}
    assert prices["0 to 20"] == 2 and prices["40 to 60"] == 1
    html = response.content.decode()
    assert "Red linen shirt" in html and "Found <strong>3</strong> results" in html

    narrowed = client.get("/search/", {"q": "linen shirt", "selected_facets": "product_class:Book"})
    assert [item.object.pk for item in narrowed.context["page"].object_list] == [products["book"].pk]
    by_price = client.get("/search/", {"q": "linen shirt", "sort_by": "price-desc"})
    assert by_price.context["page"].object_list[0].object.pk == products["blue"].pk
    exact = client.get("/search/", {"q": "SHIRT-BLUE"})  # an exact SKU ranks first
    assert exact.context["page"].object_list[0].object.pk == products["blue"].pk


@pytest.mark.django_db(transaction=True)  # the log's writer thread reads committed rows (the encoder)
def test_oscars_search_page_logs_what_the_shopper_saw(shop, pictures, empty_search_log):
    from clip_search import searchlog
    from clip_search.models import SearchRecord

    products = catalogue(shop, pictures)
    response = Client().get("/search/", {"q": "linen shirt", "sort_by": "price-desc"})
    searchlog.flush()
    row = SearchRecord.objects.get(pk=response.context["search_id"])
    shown = [str(item.object.pk) for item in response.context["page"].object_list]
    assert row.query == "linen shirt" and row.results == shown and row.hits == 3
    assert shown[0] == str(products["blue"].pk) and row.filters == {"sort": ["price-desc"]}
    # A click on the first card, as the README's beacon sends it.
    event = searchlog.add_event(row.pk, "click", products["blue"].pk, position=1)
    assert event.search_id == row.pk


def test_the_readmes_rest_facets_count_oscars_categories_types_and_prices(shop, pictures):
    from django.core.checks import run_checks
    from oscar.core.loading import get_model

    products = catalogue(shop, pictures)

    ProductCategory = get_model("catalogue", "ProductCategory")
    for product in products.values():
        ProductCategory.objects.get_or_create(product=product, category=shop["category"])
    assert [m for m in run_checks() if m.id.startswith("clip_search.E")] == []
    body = APIClient().get("/api/v1/search/", {"q": "linen shirt", "sort": "price", "highlight": 1}).json()
    # Oscar's title is a method (a variant's falls back to its parent's): marked all the same.
    marked = {hit["pk"]: hit["highlight"] for hit in body["results"]}
    assert marked[products["red"].pk]["title"] == "Red <mark>linen</mark> <mark>shirt</mark>"
    assert "category_names" in marked[products["red"].pk]
    facets = {facet["name"]: {v["value"]: v["count"] for v in facet["values"]} for facet in body["facets"]}
    assert facets["type"] == {"T-shirt": 2, "Book": 1}
    assert facets["category"] == {shop["category"].slug: 3}
    assert facets["price"] == {"-25": 2, "25-": 1}  # the blue shirt's stock record is at 45
    assert [hit["pk"] for hit in body["results"]][-1] == products["blue"].pk  # sorted by price
    narrowed = APIClient().get("/api/v1/search/", {"q": "linen shirt", "type": "Book"}).json()
    assert [hit["pk"] for hit in narrowed["results"]] == [products["book"].pk]


def test_oscars_dashboard_product_list_searches_by_hybrid_search(shop, pictures):
    products = catalogue(shop, pictures)
    client = Client()
    client.force_login(shop["staff"])
    response = client.get("/dashboard/catalogue/", {"title": "SHIRT-BLUE"})
    assert response.status_code == 200
    listed = [row.record.pk for row in response.context["products"].paginated_rows]
    assert listed[0] == products["blue"].pk
    words = client.get("/dashboard/catalogue/", {"title": "history"})  # a filter: only what matches
    assert [row.record.pk for row in words.context["products"].paginated_rows] == [products["book"].pk]
    nothing = client.get("/dashboard/catalogue/", {"title": "xyzzyqq"})
    assert list(nothing.context["products"].paginated_rows) == []
    plain = client.get("/dashboard/catalogue/")
    everything = {row.record.pk for row in plain.context["products"].paginated_rows}
    assert everything == {p.pk for p in products.values()}


def test_search_by_picture_on_oscars_storefront(shop, pictures):
    products = catalogue(shop, pictures)
    client = Client()
    assert client.get("/search/image/").status_code == 200
    response = client.post("/search/image/", {"image": upload(pictures.safe[1], "query.png")})
    assert response.status_code == 200 and "oscar/layout_2_col.html" in [t.name for t in response.templates]
    assert response.context["products"][0].pk == products["blue"].pk  # its own picture
    assert "Blue linen shirt" in response.content.decode()
    refused = client.post("/search/image/", {"image": upload(b"<html>no</html>", "page.png")})
    assert refused.status_code == 200 and refused.context["form"].errors["image"]


def test_the_api_schema_and_docs_answer_in_a_shop_on_drfs_default_schema_class(shop):
    from django.conf import settings

    assert "DEFAULT_SCHEMA_CLASS" not in settings.REST_FRAMEWORK  # this shop never set it
    client = APIClient()
    schema = client.get("/api/v1/schema/", {"format": "json"})
    assert schema.status_code == 200 and "/api/v1/search/" in schema.json()["paths"]
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
