"""schemathesis walks every route of our OpenAPI schema — without credentials, with forged
ones, and with a real (read-only) token — against the live server: no 500s, ever."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.web_data import ct_series
from tests.web_fixtures import admin_token, client, live  # noqa: F401

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture(scope="module")
def api_schema(live, client):  # noqa: ANN001, F811
    client.store_instances(ct_series(2, 16, seed="schemathesis"))
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


@pytest.fixture(scope="module")
def credentials(live):  # noqa: ANN001, F811
    reader = live.token("fuzz-reader", "data-scientist")
    return {
        "none": {},
        "forged-bearer": {"Authorization": "Bearer hf_" + "x" * 43},
        "wrong-scheme": {"Authorization": "Basic ZGVtbzpkZW1v"},
        "forged-cookie": {"Cookie": "hf_session=forged"},
        "reader": {"Authorization": f"Bearer {reader}"},
    }


def test_no_server_errors(api_schema, credentials, live):  # noqa: ANN001, F811
    """Every operation, positive and negative (malformed) inputs, every kind of credential."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 25, [op.path for op in operations]
    seen: list[str] = []
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=5, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def walk(case) -> None:  # noqa: ANN001
                for who, creds in credentials.items():
                    headers = dict(case.headers or {})
                    headers.update(creds)
                    response = case.call(base_url=live.url, headers=headers)
                    case.validate_response(response, checks=[not_a_server_error])
                    if who != "reader" and case.path not in ("/api/health", "/api/auth/login"):
                        assert response.status_code == 401, (
                            who, case.method, case.formatted_path, response.status_code)

            try:
                walk()
            except Unsatisfiable:
                # no parameters to break (e.g. GET /api/me): nothing negative to generate
                assert mode is GenerationMode.NEGATIVE, op.path
        seen.append(f"{op.method.upper()} {op.path}")
    assert "POST /dicom-web/studies" in seen and "GET /dicom-web/studies" in seen
