from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand

from clip_search.registry import registry
from clip_search.signals import connect_registration, disconnect_registration
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.loading import create_product
from shop_demo.catalog.models import Product, ProductImage


class Command(BaseCommand):
    help = ("Load the drawn demo catalog (idempotent: only what is missing). Embedding is left to "
            "clip_reindex and the workers, as in a real import. Demo only.")

    def add_arguments(self, parser):
        parser.add_argument("--products", type=int, default=1200)
        parser.add_argument("--image-size", type=int, default=320)
        parser.add_argument("--gallery-every", type=int, default=4,
                            help="every Nth product also gets a second photo in its gallery (0: none)")

    def handle(self, *args, **options):
        existing = set(Product.objects.values_list("sku", flat=True))
        specs = [s for s in generate_catalog(options["products"], seed=42) if s.sku not in existing]
        registration = registry.get(Product)
        disconnect_registration(registration)  # a bulk import: clip_reindex queues the work
        try:
            every = options["gallery_every"]
            for number, spec in enumerate(specs, 1):
                product = create_product(spec, image=spec.jpeg_bytes(options["image_size"]))
                if every and number % every == 0:  # a second view of it, in the gallery
                    gallery = ProductImage(product=product, display_order=1)
                    gallery.image.save(f"{spec.sku}-2.jpg", ContentFile(
                        spec.jpeg_bytes(options["image_size"], view=1)), save=True)
                if number % 200 == 0:
                    self.stdout.write(f"  {number}/{len(specs)} products")
        finally:
            connect_registration(registration)
        self.stdout.write(self.style.SUCCESS(
            f"Demo catalog: {Product.objects.count()} products ({len(specs)} new)."))
