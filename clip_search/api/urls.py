"""``path("api/", include("clip_search.api.urls"))`` → /api/v1/…, namespace ``clip_search_api``.

The version is a URL segment (DRF URLPathVersioning); an unknown one, or any unknown path
under the prefix, is a 404 error body.
"""

from django.urls import path, re_path

from clip_search.api import tags, views

app_name = "clip_search_api"

V = "<str:version>"

urlpatterns = [
    path(f"{V}/search/", views.SearchView.as_view(), name="search"),
    path(f"{V}/search/image/", views.ImageSearchView.as_view(), name="image-search"),
    path(f"{V}/suggest/", views.SuggestView.as_view(), name="suggest"),
    path(f"{V}/events/", views.EventsView.as_view(), name="events"),
    path(f"{V}/products/<str:product_id>/similar/", views.SimilarView.as_view(), name="similar"),
    path(f"{V}/review/", views.ReviewListView.as_view(), name="review-list"),
    path(f"{V}/review/<int:item_id>/approve/", views.ReviewApproveView.as_view(), name="review-approve"),
    path(f"{V}/review/<int:item_id>/reject/", views.ReviewRejectView.as_view(), name="review-reject"),
    path(f"{V}/products/<str:product_id>/tags/", tags.ProductTagsView.as_view(), name="product-tags"),
    path(f"{V}/products/<str:product_id>/tags/suggest/", tags.ProductTagsSuggestView.as_view(),
         name="product-tags-suggest"),
    path(f"{V}/tags/<int:tag_id>/accept/", tags.TagAcceptView.as_view(), name="tag-accept"),
    path(f"{V}/tags/<int:tag_id>/reject/", tags.TagRejectView.as_view(), name="tag-reject"),
    path(f"{V}/schema/", views.SchemaView.as_view(), name="schema"),
    path(f"{V}/docs/", views.DocsView.as_view(), name="docs"),
    # Last: any other path ending in "/" is the API's JSON 404 (without the slash, Django's
    # APPEND_SLASH still redirects first). [\s\S], not ".": a path may hold a newline (%0A).
    re_path(r"^(?:[\s\S]*/)?$", views.UnknownRouteView.as_view(), name="unknown"),
]
