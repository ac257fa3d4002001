"""schemathesis against the running server with the Open Inference Protocol's own REST document
(../shared/open-inference-protocol/open_inference_rest.yaml, read in place): every answer to a
documented status conforms to its schema and content type, invalid requests are refused with a
4xx, and nothing is a 5xx. The server serves TF Serving's half_plus_two as "half_plus_two".

The document writes its path parameters as ``${MODEL_NAME}`` (a template inside a template): read
as ``{MODEL_NAME}`` here, or every URL would name a model starting with "$". It documents only
200 (and 400 for some) answers, so a 404 for a model that isn't there is not checked against it
(status_code_conformance is not run); what is answered must still be JSON of the right shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, negative_data_rejection, response_schema_conformance
from support.fuzz import aimed
from support.server import HALF_PLUS_TWO, ServerProcess, model_config

SPEC = Path(__file__).resolve().parents[2] / "shared" / "open-inference-protocol" / "open_inference_rest.yaml"
SERVED = {"MODEL_NAME": "half_plus_two", "MODEL_VERSION": "123"}
CHECKS = [content_type_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2-schemathesis")
    config = root / "models.config"
    config.write_text(model_config({"half_plus_two": str(HALF_PLUS_TWO)}))
    server = ServerProcess(f"--model_config_file={config}", log_path=root / "server.log").wait_ready()
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


@pytest.fixture
def api_schema(server, request):
    document = yaml.safe_load(SPEC.read_text().replace("${", "{"))
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=server.rest_url)
    return aimed(schema, request, SERVED)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_and_no_5xx(case, server):
    response = case.call(timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
    case.validate_response(response, checks=CHECKS)
