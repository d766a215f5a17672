import pytest
from django.apps import apps
from django.core.files.base import ContentFile

import clip_search
from clip_search.registry import RegistrationError, Registry
from shop_demo.catalog.models import Brand, Category, Product


def test_demo_product_is_registered_with_its_fields():
    registration = clip_search.registry.get(Product)
    assert registration.text == ("title", "description", "category__name")
    assert registration.keywords == ("sku", "brand__name")
    assert registration.related_paths() == ["brand", "category"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image": "picture"}, "'picture' does not exist"),
        ({"image": "title"}, "must be an ImageField/FileField"),
        ({"image": "image", "text": ["title", "colour"]}, "'colour' does not exist"),
        ({"image": "image", "keywords": ["brand__slug"]}, "'slug' is not a field of catalog.Brand"),
        ({"image": "image", "keywords": ["price__name"]}, "not a foreign key"),
        ({"image": "image", "text": ["title"] * 5}, "at most 4 text fields"),
    ],
)
def test_unknown_fields_raise_naming_the_field(options, message):
    with pytest.raises(RegistrationError) as error:
        Registry().register(Product, **options)
    assert message in str(error.value)


def test_double_registration_is_refused():
    registry = Registry()
    registry.register(Brand, image=lambda obj: None, text=["name"])
    try:
        with pytest.raises(RegistrationError, match="already registered"):
            registry.register(Brand, image=lambda obj: None)
    finally:
        registry.unregister(Brand)
    assert not hasattr(Brand, "clip_embedding")


def test_string_registration_waits_for_models_and_reports_errors(monkeypatch):
    registry = Registry()
    monkeypatch.setattr(apps, "models_ready", False)
    assert registry.register("catalog.Category", image=lambda obj: None, text=["name"]) is None
    assert registry.register("catalog.Brand", image=lambda obj: None, text=["nope"]) is None
    monkeypatch.setattr(apps, "models_ready", True)
    registry.resolve_pending()
    try:
        assert registry.get("catalog.category").model is Category
        assert not registry.is_registered(Brand)
        assert [str(e) for e in registry.errors] == [
            "clip_search.register('catalog.Brand'): clip_search.register(catalog.Brand): "
            "field 'nope' does not exist ('nope' is not a field of catalog.Brand)."
        ]
    finally:
        registry.unregister(Category)


@pytest.mark.django_db
def test_reads_image_text_and_keywords_through_relations(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    brand = Brand.objects.create(name="Nordvik")
    category = Category.objects.create(name="Mugs", slug="mugs")
    product = Product(title="Red mug", description="A red ceramic mug.", sku="NRD-MUG-00001",
                      brand=brand, category=category, price="9.90")
    product.image.save("mug.png", ContentFile(b"\x89PNG fake bytes"), save=False)
    product.save()
    registration = clip_search.registry.get(Product)
    product = Product.objects.get(pk=product.pk)
    assert registration.read_image(product) == b"\x89PNG fake bytes"
    assert registration.text_parts(product) == [
        ("A", "Red mug"), ("B", "A red ceramic mug."), ("C", "Mugs"),
    ]
    assert registration.keyword_text(product) == "NRD-MUG-00001 Nordvik"
    product.image = ""
    assert registration.read_image(product) is None


@pytest.mark.django_db
def test_embedding_is_reachable_from_the_product():
    brand = Brand.objects.create(name="B")
    category = Category.objects.create(name="C", slug="c")
    product = Product.objects.create(title="t", sku="S1", brand=brand, category=category, price=1)
    assert product.clip_embedding is None
