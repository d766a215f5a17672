"""django-oscar support: ``INSTALLED_APPS += ["clip_search.contrib.oscar"]`` after Oscar's apps.

It registers ``catalogue.Product`` the way Oscar models it (``catalog.py``), puts the
clip_search admin mixin in front of Oscar's own ``ProductAdmin`` (``admin.py``), and offers
views for Oscar's storefront search and its dashboard product list (``views.py``).
Options: ``CLIP_SEARCH_OSCAR`` (``conf.py``).
"""
