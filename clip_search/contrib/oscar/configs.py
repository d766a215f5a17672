"""Oscar's own app configs with clip_search's views: Oscar's extension point for its search page
and its dashboard product list is the config's ``ready()`` (the search app also gets
``/search/image/``, search by picture). In INSTALLED_APPS, replace

    "oscar.apps.search.apps.SearchConfig"  ->  "clip_search.contrib.oscar.configs.SearchConfig"
    "oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig"
        ->  "clip_search.contrib.oscar.configs.CatalogueDashboardConfig"

(the same apps, labels and URLs, plus that one: nothing of Oscar is forked).
"""

from oscar.apps.dashboard.catalogue.apps import CatalogueDashboardConfig as OscarCatalogueDashboardConfig
from oscar.apps.search.apps import SearchConfig as OscarSearchConfig


class SearchConfig(OscarSearchConfig):
    """Oscar's search app with its search page on hybrid search (clip_search.contrib.oscar.search):
    list it in INSTALLED_APPS instead of ``oscar.apps.search.apps.SearchConfig``."""

    def ready(self) -> None:
        super().ready()
        from clip_search.contrib.oscar.search import HybridSearchView, ImageSearchView

        self.search_view = HybridSearchView
        self.image_search_view = ImageSearchView

    def get_urls(self) -> list:
        from django.urls import path

        image = path("image/", self.image_search_view.as_view(), name="image")
        return [*super().get_urls(), *self.post_process_urls([image])]


class CatalogueDashboardConfig(OscarCatalogueDashboardConfig):
    """Oscar's catalogue dashboard with its product list searched by hybrid search: list it
    instead of ``oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig``."""

    def ready(self) -> None:
        super().ready()
        from clip_search.contrib.oscar.search import HybridProductListView

        self.product_list_view = HybridProductListView
