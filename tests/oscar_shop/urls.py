from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("clip_search.api.urls")),
    # The pictures, for the browser test's live server (a test shop: no web server in front).
    re_path(r"^media/(?P<path>.*)$", lambda request, path: serve(request, path, settings.MEDIA_ROOT)),
    path("", include(apps.get_app_config("oscar").urls[0])),
]
