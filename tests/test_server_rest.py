"""The real server over REST (requests), sharing one core with gRPC."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest
import requests
from support import models
from support.server import ServerProcess, serve_models


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest_models")
    models.export_tf2_linear(str(root / "tf2" / "2"), scale=10.0)  # beside version 1, below
    server = serve_models(
        root, {"tf1": models.export_tf1_half_plus_two, "tf2": models.export_tf2_linear,
               "dtypes": models.export_dtypes},
        "--rest_api_timeout_in_ms=30000",
        extra={"tf2": 'model_version_policy { all {} } version_labels { key: "stable" value: 1 }'})
    yield server
    assert server.stop() == 0


def test_status_json(server):
    r = server.get("/v1/models/tf1")
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.get("/v1/models/tf2/versions/1").json()["model_version_status"][0]["version"] == "1"
    assert server.get("/v1/models/tf2/labels/stable").json()["model_version_status"][0]["version"] == "1"


def test_model_list(server):
    r = server.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["models"] == ["dtypes", "tf1", "tf2"]  # KServe v1's list
    ok = {"error_code": "OK", "error_message": ""}
    assert body["model_version_status"]["tf2"] == [{"version": "2", "state": "AVAILABLE", "status": ok},
                                                   {"version": "1", "state": "AVAILABLE", "status": ok}]
    assert body["model_version_status"]["tf1"] == [{"version": "1", "state": "AVAILABLE", "status": ok}]


def test_metadata_json(server):
    r = server.get("/v1/models/tf1/metadata")
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "tf1", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"] == {
        "name": "x:0", "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                         "unknown_rank": False}}
    assert server.get("/v1/models/tf2/versions/1/metadata").json()["model_spec"]["version"] == "1"


def test_predict_row_format(server):
    r = server.post("/v1/models/tf1:predict", json={"instances": [[1.0], [2.0], [5.0]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.5], [3.0], [4.5]]}


def test_predict_row_objects_multi_output(server):
    r = server.post("/v1/models/tf2/versions/1:predict", json={"instances": [{"x": [1, 1]}, {"x": [0, 0]}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [{"y": [4.0], "y_sum": 4.0}, {"y": [1.0], "y_sum": 1.0}]}


def test_predict_columnar_format(server):
    r = server.post("/v1/models/tf2/labels/stable:predict",
                    json={"signature_name": "add", "inputs": {"a": [1, 2], "b": [3, 4]}})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": [4.0, 6.0]}  # a lone output is given without its name
    r = server.post("/v1/models/tf2:predict", json={"inputs": [[1, 1]]})
    assert r.json() == {"outputs": {"y": [[40.0]], "y_sum": [40.0]}}


def test_b64_inputs_and_bytes_outputs(server):
    blob = b"\x00\xffbinary"
    r = server.post("/v1/models/tf2:predict", json={
        "signature_name": "echo", "instances": [{"b64": base64.b64encode(blob).decode()}, "plain"]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert predictions[0] == {"text_bytes": {"b64": base64.b64encode(blob).decode()}, "length": 8}
    assert predictions[1] == {"text_bytes": {"b64": base64.b64encode(b"plain").decode()}, "length": 5}


def test_nan_and_infinity(server):
    raw = '{"inputs": {"x": [NaN, Infinity, -Infinity, 1.5]}, "signature_name": "id_double"}'
    r = server.post("/v1/models/dtypes:predict", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert "NaN" in r.text and "-Infinity" in r.text
    values = json.loads(r.text)["outputs"]
    assert np.isnan(values[0]) and values[1:] == [float("inf"), float("-inf"), 1.5]


@pytest.mark.parametrize("dtype_name, values", [
    ("float", [[0.5, -1.25]]), ("double", [1e300]), ("half", [0.5, 2.0]), ("bfloat16", [1.0, -2.0]),
    ("int8", [-128, 127]), ("int16", [-3]), ("int32", [[1, 2], [3, 4]]), ("int64", [2 ** 40]),
    ("uint8", [255]), ("uint16", [65535]), ("uint32", [4294967295]), ("uint64", [2 ** 63]),
    ("bool", [True, False]), ("string", ["héllo", "x"]),
])
def test_dtypes_through_json(server, dtype_name, values):
    r = server.post("/v1/models/dtypes:predict",
                    json={"signature_name": f"id_{dtype_name}", "inputs": values})
    assert r.status_code == 200, r.text
    assert r.json() == {"outputs": values}


def test_gzip_request_body(server):
    body = gzip.compress(json.dumps({"instances": [[1.0]]}).encode())
    r = server.post("/v1/models/tf1:predict", data=body,
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.5]]}


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/tf1/versions/7:predict", {"instances": [[1.0]]}, 404, "Specific(tf1, 7)"),
    ("/v1/models/tf1:predict", {"instances": [[1.0]], "signature_name": "zz"}, 400, 'signature key "zz" not found'),
    ("/v1/models/tf1:predict", {"instances": [["a"]]}, 400, "input 'x'"),
    ("/v1/models/tf2:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400, "Matrix size-incompatible"),
    ("/v1/models/tf1:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400, "regular"),
    ("/v1/models/tf1:predict", {"inputs": {"y": [[1.0]]}}, 400, "Missing but required: {x}"),
    ("/v1/models/tf1:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/tf1:predict", {"instances": [[1.0]], "inputs": [[1.0]]}, 400, "Not both"),
    ("/v1/models/tf2/labels/nolabel:predict", {"instances": [[1.0, 1.0]]}, 400, "nolabel"),
    ("/v1/models/tf1:classify", {"examples": [{"x": 1.0}]}, 400, "at least one of classes or scores"),
])
def test_error_statuses(server, path, body, status, needle):
    r = server.post(path, json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_malformed_json(server):
    r = server.post("/v1/models/tf1:predict", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON Parse error" in r.json()["error"]


def test_malformed_gzip(server):
    r = server.post("/v1/models/tf1:predict", data=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "gzip" in r.json()["error"]


def test_unknown_routes(server):
    assert server.get("/v1/models/tf1:predict").status_code == 404
    assert server.post("/v1/models/tf1").status_code == 404
    assert server.get("/v2/whatever").status_code == 404
    r = server.get("/v1/models/nope")
    assert r.status_code == 404 and "Could not find any versions of model nope" in r.json()["error"]


def test_server_still_serves_after_errors(server):
    for _ in range(3):
        server.post("/v1/models/tf1:predict", data=b"\xff\xfe")
    assert server.post("/v1/models/tf1:predict", json={"instances": [[0.0]]}).json() == {"predictions": [[2.0]]}
    assert server.get("/v1/models/tf1").json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_readiness_urls(server):
    r = server.get("/v1/models/tf2/ready")
    assert r.status_code == 200 and r.json() == {"ready": True, "model_spec": {"name": "tf2", "version": "2"}}
    assert server.get("/v1/models/tf2/labels/stable/ready").json()["model_spec"]["version"] == "1"
    missing = server.get("/v1/models/tf2/versions/9/ready")
    assert missing.status_code == 503 and missing.json()["ready"] is False
    assert server.get("/v1/models/nope/ready").status_code == 404  # not served at all, as its status says
    ready = server.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": {"dtypes": True, "tf1": True, "tf2": True}}
    assert server.get("/healthz").json() == {"status": "ok"}


def test_label_urls_on_every_verb(server):
    assert server.get("/v1/models/tf2/labels/stable/metadata").json()["model_spec"]["version"] == "1"
    r = server.post("/v1/models/tf2/labels/stable:predict", json={"instances": [[1.0, 1.0]]})
    assert r.json()["predictions"][0]["y"] == [4.0]
    for verb in ("classify", "regress"):
        r = server.post(f"/v1/models/tf2/labels/stable:{verb}", json={"examples": [{"x": 1.0}]})
        assert r.status_code == 400 and "Expected" in r.json()["error"] and "signature 'serving_default'" in r.json()["error"]
        r = server.post(f"/v1/models/tf2/labels/nolabel:{verb}", json={"examples": [{"x": 1.0}]})
        assert r.status_code == 400 and "nolabel" in r.json()["error"]


def test_cors_support(tmp_path):
    models.export_tf1_half_plus_two(str(tmp_path / "tf1" / "1"))
    cors = ServerProcess("--model_name=tf1", f"--model_base_path={tmp_path / 'tf1'}",
                         "--rest_api_enable_cors_support", log_path=tmp_path / "server.log").wait_ready()
    try:
        preflight = requests.options(cors.rest_url + "/v1/models/tf1:predict", timeout=10, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code in (200, 204)
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        r = cors.post("/v1/models/tf1:predict", json={"instances": [[1.0]]}, headers={"Origin": "https://app.example"})
        assert r.json() == {"predictions": [[2.5]]}
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        assert cors.stop() == 0


def test_no_cors_headers_by_default(server):
    r = server.post("/v1/models/tf1:predict", json={"instances": [[1.0]]}, headers={"Origin": "https://x.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_hostile_bodies_are_400_and_cost_nothing(server):
    deep = "[" * 100_000 + "]" * 100_000
    r = server.post("/v1/models/tf1:predict", data=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"]
    r = server.post("/v1/models/dtypes:predict",
                    data='{"signature_name": "id_string", "inputs": ' + "[" * 5000 + '"a"' + "]" * 5000 + "}",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert server.post("/v1/models/tf1:predict", json={"instances": [[0.0]]}).json() == {"predictions": [[2.0]]}
