from django.apps import AppConfig
from django.db.models.signals import post_delete
from django.utils.translation import gettext_lazy as _


class ClipSearchConfig(AppConfig):
    name = "clip_search"
    verbose_name = _("CLIP search")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from clip_search import checks, synonyms  # noqa: F401 - registers the checks and receivers
        from clip_search.registry import registry
        from clip_search.signals import connect_registration, disconnect_registration
        from clip_search.tagging import signals as tag_signals

        # The registry only describes models; the signal wiring subscribes to it here, for
        # registrations made before this app's ready() and for those made after.
        registry.subscribe(connect_registration, disconnect_registration)
        registry.subscribe(tag_signals.connect, tag_signals.disconnect)
        registry.resolve_pending()
        post_delete.connect(_drop_vector_index, sender="clip_search.EncoderModel",
                            dispatch_uid="clip_search.drop_vector_index")


def _drop_vector_index(sender, instance, using, **kwargs) -> None:
    """An encoder's partial HNSW index goes with it (its rows are gone by cascade)."""
    from clip_search.sql import drop_vector_index

    drop_vector_index(instance.pk, using=using)
