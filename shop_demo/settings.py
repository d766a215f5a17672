"""Settings of the demo shop: a small Django shop that uses clip_search as a real one would."""

import importlib.util
import os
from pathlib import Path

from shop_demo.embedded_db import DATA_DIR, database_config

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
# Off unless a developer asks (DJANGO_DEBUG=1): with DEBUG on, any error page shows a client the
# traceback, the settings and the SQL. scripts/demo.sh serves static files with runserver
# --insecure and urls.py serves the product pictures, so the demo works without it.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "clip_search",
    "shop_demo.catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_demo.urls"
WSGI_APPLICATION = "shop_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", DATA_DIR / "media"))

CLIP_SEARCH = {
    # The demo runs offline: a small CLIP the project trains itself on its drawn catalog
    # (manage.py demo_model, i.e. clip_train with the demo's arguments). A real shop sets
    # "ViT-B-32" and "laion2b_s34b_b79k", or its own fine-tuned local-dir:.
    "MODEL": os.environ.get("CLIP_SEARCH_MODEL", f"local-dir:{DATA_DIR / 'models' / 'demo-clip'}"),
    "PRETRAINED": os.environ.get("CLIP_SEARCH_PRETRAINED", ""),
    "QUEUE": os.environ.get("CLIP_SEARCH_QUEUE", "clip_search"),
    "MODERATION": {
        "CATEGORIES": {
            "weapons": {
                "PROMPTS": ["a photo of a knife", "a photo of a chef's knife", "a photo of a combat knife"],
                "THRESHOLD": 0.5,
            },
        },
        # What the shop sells: the safe classes the safety prompts compete with.
        "SAFE_PROMPTS": [f"a photo of a {noun}" for noun in (
            "t-shirt", "mug", "sneaker", "backpack", "lamp", "chair", "watch", "hat", "bottle", "umbrella")],
    },
    # Zero-shot tagging (manage.py clip_tag, the admin's "Suggest tags"): the shop's colours, and
    # its categories as its own table names them; staff accept or reject the suggestions.
    "TAGGING": {
        "SETS": {
            "colour": {
                "LABELS": ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink",
                           "brown"],
                "PROMPTS": ["a photo of a {} product", "a {} product", "a product in {}"],
            },
            "category": {"LABELS": "shop_demo.catalog.clip.category_labels"},
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "clip_search": {"handlers": ["console"], "level": "INFO"},
        # Django's own console handler prints only while DEBUG is on: without this, a 500 in the
        # demo would leave no traceback anywhere.
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}

# Celery. With no CELERY_BROKER_URL the demo uses kombu's filesystem transport under .data/,
# an embedded broker that needs no service; set redis:// or amqp:// for a real one.
_BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    for _folder in ("queue", "processed", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "control_folder": str(_BROKER_DIR / "control"),  # default: ./control in the cwd
        "store_processed": False,
    }
else:
    # Redis: an unacked task comes back after this long (default 1 h) if its worker died.
    # A killed worker's unacknowledged task comes back once it is visibility_timeout old; kombu's
    # Redis transport only looks every unacked_restore_throttle × 10 s (default 10 × 10 s).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 600)),
        "unacked_restore_throttle": 1}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "clip-search-sweep": {"task": "clip_search.sweep", "schedule": 300.0},
}

# The storefront REST API (clip_search.api, the "api" extra) and the demo storefront page at /.
INSTALLED_APPS += ["django_filters", "drf_spectacular", "shop_demo.storefront"]
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # clip_search.api's throttle scopes: search and "more like this", and the stricter image search.
    "DEFAULT_THROTTLE_RATES": {"clip_search": "120/min", "clip_search_image": "20/min",
                               "clip_search_suggest": "600/min"},
}
# DEMO_API_THROTTLE=off lifts the API's per-address rates, for a local simulation whose shoppers
# all come from one address (manage.py demo_shoppers --url): never on a public server.
if os.environ.get("DEMO_API_THROTTLE", "on") == "off":
    REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = dict.fromkeys(
        ("clip_search", "clip_search_image", "clip_search_suggest", "clip_search_events"))
SPECTACULAR_SETTINGS = {
    "TITLE": "Demo shop API",
    "SERVE_INCLUDE_SCHEMA": False,
}
if importlib.util.find_spec("drf_spectacular_sidecar"):  # Swagger UI served from here, not a CDN
    INSTALLED_APPS += ["drf_spectacular_sidecar"]
    SPECTACULAR_SETTINGS.update(SWAGGER_UI_DIST="SIDECAR", SWAGGER_UI_FAVICON_HREF="SIDECAR",
                                REDOC_DIST="SIDECAR")
# Which registered model the API serves, with the shop's own serializer and filters, the facets
# counted over a search's hits (each also a filter: ?category=mug) and the orders offered.
CLIP_SEARCH_API = {
    "MODEL": "catalog.product",
    "SERIALIZER": "shop_demo.storefront.api.ProductSerializer",
    "FILTERSET": "shop_demo.storefront.api.ProductFilterSet",
    "FACETS": {
        "category": {"field": "category__slug", "label": "category__name", "title": "Category"},
        "brand": {"field": "brand__name", "title": "Brand"},
        "price": {"field": "price", "title": "Price",
                  "ranges": [[None, 25], [25, 50], [50, 100], [100, 200], [200, None]]},
        "in_stock": {"field": "in_stock", "title": "In stock"},
    },
    "SORTS": {
        "price": {"label": "Price: low to high", "order_by": ["price"]},
        "-price": {"label": "Price: high to low", "order_by": ["-price"]},
        "newest": {"label": "Newest", "order_by": ["-created_at"]},
    },
}
