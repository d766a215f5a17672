from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ClipSearchConfig(AppConfig):
    name = "clip_search"
    verbose_name = _("CLIP search")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from clip_search import checks  # noqa: F401 - registers the system checks
        from clip_search.registry import registry

        registry.resolve_pending()
