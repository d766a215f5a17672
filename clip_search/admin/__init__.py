"""The Django admin staff use to search the catalog and review quarantined uploads.

``ClipSearchAdminMixin`` goes in front of the shop's *own* ModelAdmin of a registered model
(``class ProductAdmin(ClipSearchAdminMixin, admin.ModelAdmin)``): the changelist search box
runs hybrid search, the list gets a thumbnail and an embedding-status column, and staff get
search by image, "similar products", an explain page and a re-embed action. The shop's
model and its other admin options stay as they are.

The review queue (``ReviewItem``), the synonym sets, the product tags, the embeddings and the
encoder models get admins of their own, registered on the default admin site:

- ``catalog``: the mixin and ``extend_admin``;
- ``display``: badges, thumbnails and each leg's evidence, shared by the pages;
- ``review``: the review queue and its audit trail;
- ``synonyms``: the shop's synonym sets, imported and exported as a file;
- ``analytics``: the search log and its analytics page (``charts``: server-drawn SVG);
- ``tags``: zero-shot tag suggestions and staff decisions on them, and the changelist's tag column;
- ``index``: clip_search's own rows, read-only.
"""

from clip_search.admin import analytics, index, review, synonyms, tags  # noqa: F401 - register their admins
from clip_search.admin.catalog import ClipSearchAdminMixin, extend_admin

__all__ = ["ClipSearchAdminMixin", "extend_admin"]
