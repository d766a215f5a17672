"""Oscar registers its own ``ProductAdmin``: extend it in place. The admin's autodiscovery imports
this module after Oscar's catalogue admin (this app comes after Oscar's in INSTALLED_APPS), and
before any ``ready()`` has run, so it does not ask the registry (ClipSearchAdminMixin's own check
reports a Product that ends up unregistered)."""

from clip_search.admin import extend_admin
from clip_search.contrib.oscar.conf import oscar_options

if oscar_options()["ADMIN"]:
    extend_admin("catalogue.Product")
