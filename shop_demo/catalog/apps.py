from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "shop_demo.catalog"
    label = "catalog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # How a shop wires clip_search: one module, imported here, like admin.py.
        from shop_demo.catalog import clip  # noqa: F401
