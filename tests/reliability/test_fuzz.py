"""Schemathesis over the API's own OpenAPI document, against a live server on loopback.

Bounded: 60 generated requests per mode (valid input, then invalid), no deadline (2 shared
cores). Every response must be a non-5xx, with a status the document lists, its content type,
headers and body schema.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api import assert_error

# The server thread reads the module's committed catalog; the marker sets up the test database.
pytestmark = pytest.mark.django_db
EXAMPLES = 60

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_the_api_answers_every_generated_request_within_its_schema(live_shop, mode):
    url, _ = live_shop
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12, [getattr(op, "label", op) for op in operations]
    seen: set[str] = set()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case):
        seen.add(case.operation.label)
        case.call_and_validate(checks=CHECKS)

    call()
    assert len(seen) >= 4, seen  # the examples reached most operations


def test_an_unknown_path_under_the_api_gets_the_api_error_body(db):
    """What the fuzzer found: review/<not an int>/reject/ answered Django's HTML 404 page."""
    api = APIClient()
    assert_error(api.post("/api/v1/review/abc/reject/"), 404, "not_found")
    assert_error(api.post("/api/v1/review/%7C%0A%C3%A6/reject/"), 404, "not_found")  # a newline in it
    assert_error(api.get("/api/v1/no-such-thing/"), 404, "not_found")
    assert_error(api.get("/api/"), 404, "not_found")
    assert api.get("/api/v1/search", {"q": "mug"}).status_code == 301  # APPEND_SLASH still redirects
