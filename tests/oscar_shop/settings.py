"""Oscar's settings as its docs give them (``oscar.INSTALLED_APPS``, ``oscar.defaults``), plus
what the README's django-oscar section adds. Database: the embedded PostgreSQL (or DATABASE_URL)."""

import os
from pathlib import Path

from oscar import INSTALLED_APPS as OSCAR_APPS
from oscar.defaults import *  # noqa: F403 - every OSCAR_* default, as Oscar's docs do

from shop_demo.embedded_db import DATA_DIR, database_config

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "oscar-test-shop-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

# Oscar's search page and its dashboard product list on hybrid search: the same apps, with
# clip_search's configs in place of Oscar's (README "django-oscar").
SWAPPED = {
    "oscar.apps.search.apps.SearchConfig": "clip_search.contrib.oscar.configs.SearchConfig",
    "oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig":
        "clip_search.contrib.oscar.configs.CatalogueDashboardConfig",
}
INSTALLED_APPS = [
    *(SWAPPED.get(app, app) for app in OSCAR_APPS),
    "sorl.thumbnail",  # Oscar's default thumbnailer
    # clip_search, as README "django-oscar" says: after Oscar's apps.
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "clip_search",
    "clip_search.contrib.oscar",
]
SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oscar.apps.basket.middleware.BasketMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
]
AUTHENTICATION_BACKENDS = ("oscar.apps.customer.auth_backends.EmailBackend",
                           "django.contrib.auth.backends.ModelBackend")
ROOT_URLCONF = "tests.oscar_shop.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.debug",
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
        "oscar.apps.search.context_processors.search_form",
        "oscar.apps.checkout.context_processors.checkout",
        "oscar.apps.communication.notifications.context_processors.notifications",
        "oscar.core.context_processors.metadata",
    ]},
}]

DATABASES = {"default": {**database_config(), "ATOMIC_REQUESTS": True}}  # Oscar recommends it
DATABASES["default"]["TEST"] = {"NAME": "test_oscar_shop"}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
HAYSTACK_CONNECTIONS = {"default": {"ENGINE": "haystack.backends.simple_backend.SimpleEngine"}}

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", DATA_DIR / "oscar-media"))
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

CLIP_SEARCH = {
    "MODEL": os.environ.get("CLIP_SEARCH_MODEL", f"local-dir:{DATA_DIR / 'models' / 'demo-clip'}"),
    "PRETRAINED": os.environ.get("CLIP_SEARCH_PRETRAINED", ""),
    "QUEUE": os.environ.get("CLIP_SEARCH_QUEUE", "clip_search"),
    "MODERATION": {
        "CATEGORIES": {"weapons": {
            "PROMPTS": ["a photo of a knife", "a photo of a chef's knife", "a photo of a combat knife"],
            "THRESHOLD": 0.5}},
        "SAFE_PROMPTS": [f"a photo of a {noun}" for noun in (
            "t-shirt", "mug", "sneaker", "backpack", "lamp", "chair", "watch", "hat", "bottle", "umbrella")],
    },
}
# As the README's django-oscar section declares them.
CLIP_SEARCH_API = {
    "MODEL": "catalogue.product",
    "FACETS": {
        "category": {"field": "productcategory__category__slug",
                     "label": "productcategory__category__name", "title": "Category"},
        "type": {"field": "product_class__name", "title": "Product type"},
        "price": {"field": "stockrecords__price", "title": "Price", "ranges": [[None, 25], [25, None]]},
    },
    "SORTS": {"price": {"label": "Price: low to high", "order_by": ["stockrecords__price"]}},
}
REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"clip_search": "1000/min", "clip_search_image": "1000/min"}}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
