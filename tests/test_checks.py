import os
import socket
import subprocess
import sys
from pathlib import Path

from django.core.checks import run_checks
from django.test import override_settings

from clip_search.checks import (
    check_database,
    check_encoder_backends,
    check_registrations,
    check_routers,
    check_settings,
    check_storefront_api,
)
from clip_search.registry import RegistrationError, registry
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent


def ids(messages):
    return [m.id for m in messages]


def test_demo_project_checks_are_clean(db, demo_model_dir):
    assert [m for m in run_checks(include_deployment_checks=False) if m.id.startswith("clip_search")] == []


def test_invalid_settings_are_a_check_error_not_an_import_error():
    with override_settings(CLIP_SEARCH={"SEARCH": {"RRF_K": -1}}):
        messages = check_settings()
    assert ids(messages) == ["clip_search.E001"]
    assert "RRF_K" in messages[0].msg


def test_onnx_backend_without_onnxruntime_is_a_check_error(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # uninstalling a package is not possible here
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    with override_settings(CLIP_SEARCH={"TEXT_ENCODER": {"BACKEND": "onnx"}}):
        messages = check_encoder_backends()
    assert ids(messages) == ["clip_search.E005"]
    assert "TEXT_ENCODER" in messages[0].msg
    with override_settings(CLIP_SEARCH={"TEXT_ENCODER": {"BACKEND": "torch"}}):
        assert check_encoder_backends() == []


def test_registration_errors_are_reported(monkeypatch):
    monkeypatch.setattr(registry, "errors", [RegistrationError("field 'colour' does not exist")])
    messages = check_registrations()
    assert ids(messages) == ["clip_search.E002"]
    assert "colour" in messages[0].msg


def test_pgvector_present_on_the_embedded_server(db):
    assert check_database() == []


def _debian_postgres_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


def test_manage_py_check_reports_missing_pgvector():
    """The machine's own PostgreSQL has no pgvector: a real server missing the extension."""
    require(_debian_postgres_reachable(), "no PostgreSQL on 127.0.0.1:5432 to stand for a "
            "server without pgvector")
    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    import psycopg

    with psycopg.connect(url) as conn:
        has_vector = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0]
    require(has_vector == 0, "the server on 5432 has pgvector, so it cannot stand for one without")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                            env={**os.environ, "DATABASE_URL": url},
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "clip_search.E004" in output
    assert "'vector' (pgvector) is not available" in output


def test_a_read_replica_router_without_clip_searchs_router_in_front_is_a_warning():
    shop_router = "tests.reliability.replica_router.PrimaryReplicaRouter"
    with override_settings(DATABASE_ROUTERS=[shop_router]):
        [warning] = check_routers()
        assert warning.id == "clip_search.W004" and "'replica'" in warning.msg
        assert "clip_search.routers.ReadYourWritesRouter" in warning.hint
    with override_settings(DATABASE_ROUTERS=[shop_router, "clip_search.routers.ReadYourWritesRouter"]):
        assert ids(check_routers()) == ["clip_search.W004"]  # behind the shop's router it is never asked
    with override_settings(DATABASE_ROUTERS=["clip_search.routers.ReadYourWritesRouter", shop_router]):
        assert check_routers() == []
    assert check_routers() == []  # one database: nothing to say


def test_a_storefront_facet_or_sort_naming_no_field_is_a_check_error(settings):
    assert check_storefront_api() == []  # the demo's declarations
    declared = settings.CLIP_SEARCH_API
    settings.CLIP_SEARCH_API = {**declared, "FACETS": {"colour": {"field": "colour__name"}}}
    (error,) = check_storefront_api()
    assert error.id == "clip_search.E008" and "facet 'colour'" in error.msg and "'colour'" in error.msg
    settings.CLIP_SEARCH_API = {**declared, "SORTS": {"cheap": {"order_by": ["-cost"]}}}
    (error,) = check_storefront_api()
    assert error.id == "clip_search.E008" and "SORTS']['cheap']" in error.msg and "'cost'" in error.msg
    settings.CLIP_SEARCH_API = {**declared, "SORTS": {"cheap": {"label": "Cheap"}}}
    assert ids(check_storefront_api()) == ["clip_search.E008"]
