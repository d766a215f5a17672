import re

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path, re_path
from django.views.static import serve

from shop_demo.storefront import views as storefront


def demo_media(request: HttpRequest, path: str) -> HttpResponse:
    """DEMO ONLY: the product pictures, served by Django whatever DEBUG says.

    ``django.conf.urls.static.static()`` serves nothing once DEBUG is off (the demo's default), and
    the demo has no web server in front. A real shop serves MEDIA_ROOT from its web server or
    object storage, never through Django. MEDIA_ROOT is read per request (tests swap it)."""
    return serve(request, path, document_root=settings.MEDIA_ROOT)


urlpatterns = [
    path("", storefront.index, name="storefront"),
    path("api/", include("clip_search.api.urls")),
    path("admin/", admin.site.urls),
    re_path(rf"^{re.escape(settings.MEDIA_URL.lstrip('/'))}(?P<path>.*)$", demo_media),  # demo only
]
