"""The API's OpenAPI document and docs page whatever the shop's DRF ``DEFAULT_SCHEMA_CLASS``.

The demo sets it to drf-spectacular's AutoSchema; a shop that leaves DRF's default (DRF's own
AutoSchema) must get the same document, the same docs page, and no drf_spectacular.E001 from
``check --deploy`` because of clip_search's views.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.templatetags.static import static
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_CLASS = "DEFAULT_SCHEMA_CLASS"
SIDECAR_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")


def url(name: str) -> str:
    return reverse(f"clip_search_api:{name}", kwargs={"version": "v1"})


def without_schema_class() -> dict:
    """The demo's REST_FRAMEWORK without DEFAULT_SCHEMA_CLASS, as a shop that never set it."""
    assert SCHEMA_CLASS in settings.REST_FRAMEWORK  # else the comparison below would be moot
    return {key: value for key, value in settings.REST_FRAMEWORK.items() if key != SCHEMA_CLASS}


def schema_document(api: APIClient) -> dict:
    response = api.get(url("schema"), {"format": "json"})
    assert response.status_code == 200, response.content[:1000]
    return response.json()


def test_the_schema_is_the_same_under_drfs_default_schema_class(db):
    from rest_framework.schemas.openapi import AutoSchema as DrfAutoSchema
    from rest_framework.settings import api_settings

    api = APIClient()
    with_setting = schema_document(api)
    with override_settings(REST_FRAMEWORK=without_schema_class()):
        assert api_settings.DEFAULT_SCHEMA_CLASS is DrfAutoSchema
        yaml = api.get(url("schema"))
        document = schema_document(api)
    assert yaml.status_code == 200 and yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert len(with_setting["paths"]) == 12
    assert document["paths"] == with_setting["paths"] and document == with_setting
    for path in with_setting["paths"]:
        assert f"\n  {path}:\n".encode() in yaml.content


def test_the_docs_page_uses_the_sidecar_under_drfs_default_schema_class(db):
    with override_settings(REST_FRAMEWORK=without_schema_class()):
        response = APIClient().get(url("docs"))
    assert response.status_code == 200
    page = response.content.decode()
    assert f'url: "{url("schema")}"' in page
    for name in SIDECAR_FILES:
        assert static(f"drf_spectacular_sidecar/swagger-ui-dist/{name}") in page
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()


SHOP_SETTINGS = """
from shop_demo.settings import *  # noqa: F403

REST_FRAMEWORK = {key: value for key, value in REST_FRAMEWORK.items()  # noqa: F405
                  if key != "DEFAULT_SCHEMA_CLASS"}
"""

# In a fresh process, so clip_search's views are imported under DRF's default as in such a shop.
SHOP_PROBE = """
import json, django
django.setup()
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client
from django.test.utils import setup_test_environment
from rest_framework.settings import api_settings
try:
    call_command("check", deploy=True, fail_level="ERROR")
    check = "ok"
except SystemCheckError as error:
    check = str(error)
setup_test_environment()
client = Client(raise_request_exception=False)
print(json.dumps({
    "schema_class": api_settings.DEFAULT_SCHEMA_CLASS.__module__,
    "check": check,
    "status": {path: client.get(path).status_code
               for path in ("/api/v1/schema/", "/api/v1/schema/?format=json", "/api/v1/docs/")},
}))
"""


def test_a_shop_on_drfs_defaults_passes_check_deploy_and_serves_the_schema(tmp_path):
    (tmp_path / "drf_default_shop.py").write_text(SHOP_SETTINGS)
    # As a deployed shop runs: without the async-safety escape hatch the browser tests set in
    # this process (check --deploy rightly reports it).
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {**inherited, "DJANGO_SETTINGS_MODULE": "drf_default_shop",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", SHOP_PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["schema_class"] == "rest_framework.schemas.openapi"
    assert result["check"] == "ok" and "drf_spectacular" not in done.stderr, done.stderr[-3000:]
    assert set(result["status"].values()) == {200}, result


def references(node: object) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if "$ref" in node else set().union(*map(references, node.values()))
    if isinstance(node, list):
        return set().union(*map(references, node))
    return set()


def test_every_request_gets_the_same_complete_document(db):
    api = APIClient()
    first, second = schema_document(api), schema_document(api)
    assert first == second
    components = {f"#/components/schemas/{name}" for name in second["components"]["schemas"]}
    assert "#/components/schemas/LegsEnum" in references(second["components"])
    assert references(second) <= components
