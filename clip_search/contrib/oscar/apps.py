from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ClipSearchOscarConfig(AppConfig):
    name = "clip_search.contrib.oscar"
    label = "clip_search_oscar"
    verbose_name = _("CLIP search for django-oscar")

    def ready(self) -> None:
        from clip_search.contrib.oscar.catalog import register_product
        from clip_search.contrib.oscar.conf import oscar_options

        if oscar_options()["REGISTER"]:
            register_product()
