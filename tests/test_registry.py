import pytest
from django.apps import apps
from django.core.files.base import ContentFile

import clip_search
from clip_search.registry import RegistrationError, Registry
from shop_demo.catalog.models import Brand, Category, Product, ProductImage
from tests.catalog import add_image


def test_demo_product_is_registered_with_its_fields():
    registration = clip_search.registry.get(Product)
    assert registration.text == ("title", "description", "category__name")
    assert registration.keywords == ("sku", "brand__name")
    assert registration.related_paths() == ["brand", "category"]
    assert registration.prefetch_paths() == ["gallery"]
    watchers = {w.model: w for w in registration.watchers()}
    assert set(watchers) == {ProductImage, Brand, Category}
    assert watchers[ProductImage].images and watchers[ProductImage].fields == {"image"}
    assert not watchers[Brand].images and watchers[Brand].fields == {"name"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image": "picture"}, "'picture' does not exist"),
        ({"image": "title"}, "must end at an ImageField/FileField"),
        ({"image": "image", "text": ["title", "colour"]}, "'colour' does not exist"),
        ({"image": "image", "keywords": ["brand__slug"]}, "'slug' is not a field of catalog.Brand"),
        ({"image": "image", "keywords": ["price__name"]}, "not a foreign key"),
        ({"image": "image", "text": ["title"] * 5}, "at most 4 text fields"),
        ({"image": "image", "images": ["image"]}, "not both"),
        ({"images": ["image", "gallery__caption"]}, "'gallery__caption' must end at an ImageField"),
        ({"image": "gallery__image"}, "only images= may follow one"),
        ({"images": "image", "related": {"catalog.Brand": "nope"}}, "'nope' is not a field of catalog.Brand"),
        ({"images": "image", "related": {"catalog.Brand": "name"}}, "must follow relations"),
        ({"images": "image", "related": {"catalog.ProductImage": "product__brand"}},
         "leads to catalog.Brand"),
        ({"images": "image", "related": {"catalog.Nope": "product"}}, "related="),
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


@pytest.mark.django_db
def test_images_come_in_display_order_and_the_digest_follows_them(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    brand = Brand.objects.create(name="Nordvik")
    category = Category.objects.create(name="Mugs", slug="mugs")
    product = Product.objects.create(title="Red mug", sku="NRD-1", brand=brand, category=category, price=1)
    registration = clip_search.registry.get(Product)
    empty = registration.source_digest(product)
    later = add_image(product, b"second", order=2, name="b.png")
    add_image(product, b"first", order=1, name="a.png")
    product = registration.fetch([product.pk])[0]
    images = registration.source_images(product)
    assert [image.read() for image in images] == [b"first", b"second"]
    assert [image.size() for image in images] == [5, 6] and images[0].url.endswith("a.png")
    digest = registration.source_digest(product, images)
    assert digest != empty
    ProductImage.objects.filter(pk=later.pk).update(display_order=0)
    assert registration.source_digest(registration.fetch([product.pk])[0]) != digest  # the order counts


def test_related_callables_and_paths_map_a_row_to_the_products_it_feeds():
    registry = Registry()
    registration = registry.register(Category, images=lambda obj: [b"x"], text=["name"],
                                     related={Product: "category", "catalog.Brand": lambda b: [7, None, 7]})
    try:
        watchers = {w.model: w for w in registration.watchers()}
        assert watchers[Brand].affected(Brand(pk=1, name="x")) == [7]
        assert watchers[Product].affected(Product(category=Category(pk=3, name="c"))) == [3]
        assert all(w.images for w in watchers.values())  # a callable's images come from anywhere
        assert registration.source_images(Category(name="c"))[0].identity.startswith("sha256:")
    finally:
        registry.unregister(Category)


def test_text_and_keywords_may_come_from_callables():
    registry = Registry()
    registration = registry.register(
        Category, image=lambda obj: None, text=["name", lambda c: [f"{c.slug} room", None, ""]],
        keywords=[lambda c: ("SKU-1", "SKU-2"), "slug"])
    try:
        category = Category(name="Mugs", slug="mugs")
        assert registration.text_parts(category) == [("A", "Mugs"), ("B", "mugs room")]
        assert registration.keyword_values(category) == ["SKU-1", "SKU-2", "mugs"]
        assert registration.read_roots() is None  # a callable may read anything
        assert registration.paths() == ["name", "slug"]
    finally:
        registry.unregister(Category)
    with pytest.raises(RegistrationError, match="field path or a callable"):
        Registry().register(Category, image="x", text=[42])



def test_image_url_comes_from_the_registration_for_images_given_as_bytes():
    registry = Registry()
    registration = registry.register(Category, images=lambda c: [b"\x89PNG"], text=["name"])
    try:
        assert registration.image_url(Category(name="c", slug="s")) is None  # bytes have no URL
    finally:
        registry.unregister(Category)
    registration = registry.register(Category, images=lambda c: [b"\x89PNG"], text=["name"],
                                     image_url=lambda c: f"https://cdn.example.com/{c.slug}.jpg")
    try:
        assert registration.image_url(Category(name="c", slug="s")) == "https://cdn.example.com/s.jpg"
    finally:
        registry.unregister(Category)
