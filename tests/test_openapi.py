"""GET /v1/openapi.json: a valid OpenAPI 3 document, and the running server's answers conform to it."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate
from support.server import serve_half_plus_two


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = serve_half_plus_two(tmp_path_factory.mktemp("openapi"))
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def document(server):
    r = server.get("/v1/openapi.json")
    assert r.status_code == 200
    return r.json()


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


EXAMPLE = {"examples": [{"x": 1.0}]}
CALLS = [  # method, concrete path, templated path, body, expected status
    ("get", "/v1/models", "/v1/models", None, 200),
    ("get", "/v1/models/hpt", "/v1/models/{model_name}", None, 200),
    ("get", "/v1/models/hpt/versions/123", "/v1/models/{model_name}/versions/{version}", None, 200),
    ("get", "/v1/models/nope", "/v1/models/{model_name}", None, 404),
    ("get", "/v1/models/hpt/metadata", "/v1/models/{model_name}/metadata", None, 200),
    ("get", "/v1/models/hpt/ready", "/v1/models/{model_name}/ready", None, 200),
    ("get", "/v1/models/nope/ready", "/v1/models/{model_name}/ready", None, 404),
    ("post", "/v1/models/hpt:predict", "/v1/models/{model_name}:predict", {"instances": [1.0]}, 200),
    ("post", "/v1/models/hpt/versions/123:predict", "/v1/models/{model_name}/versions/{version}:predict",
     {"inputs": {"x": [[1.0]]}}, 200),
    ("post", "/v1/models/hpt:predict", "/v1/models/{model_name}:predict", {"instances": "nonsense"}, 400),
    ("post", "/v1/models/nope:predict", "/v1/models/{model_name}:predict", {"instances": [1.0]}, 404),
    ("post", "/v1/models/hpt:classify", "/v1/models/{model_name}:classify",
     {"signature_name": "classify_x_to_y", **EXAMPLE}, 200),
    ("post", "/v1/models/hpt:regress", "/v1/models/{model_name}:regress",
     {"signature_name": "regress_x_to_y", **EXAMPLE}, 200),
    ("get", "/readyz", "/readyz", None, 200),
    ("get", "/healthz", "/healthz", None, 200),
    ("get", "/v1/status", "/v1/status", None, 200),
]


@pytest.mark.parametrize("method, path, template, body, status", CALLS, ids=[f"{c[0]} {c[1]} {c[4]}" for c in CALLS])
def test_answers_conform_to_the_document(server, document, method, path, template, body, status):
    r = getattr(server, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    responses = document["paths"][template][method]["responses"]
    assert str(status) in responses, f"{template} does not document {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    resolver = {"components": document["components"], **schema}
    jsonschema.validate(r.json(), resolver)
