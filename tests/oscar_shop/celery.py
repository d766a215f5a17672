"""The Oscar test shop's Celery app, set up the way the Celery docs set up a Django project."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.oscar_shop.settings")

app = Celery("oscar_shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
