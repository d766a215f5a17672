from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

from shop_demo.storefront import views as storefront

urlpatterns = [
    path("", storefront.index, name="storefront"),
    path("api/", include("clip_search.api.urls")),
    path("admin/", admin.site.urls),
] + static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)  # thumbnails, in DEBUG only
