"""The storefront REST API: text, image and "more like this" search, and the review queue.

A shop mounts it with ``path("api/", include("clip_search.api.urls"))`` and gets, under
``/api/v1/``: ``search/``, ``search/image/``, ``products/<pk>/similar/``, ``review/``,
``review/<id>/approve/``, ``review/<id>/reject/``, ``schema/`` (OpenAPI 3) and ``docs/``.
Needs the ``api`` extra (drf-spectacular, django-filter). Options: ``clip_search.api.conf``.
"""
