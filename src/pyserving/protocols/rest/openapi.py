"""The REST API as an OpenAPI 3 document, served at GET /v1/openapi.json.

TF Serving's REST API (status, metadata, predict, classify, regress; by version or label), the
Open Inference Protocol's (openapi_v2.py) and pyserving's own routes (model list, readiness,
health, status page). Schemas describe the JSON envelopes; the
tensors inside are as TF Serving's REST API documents them (rows or columns of any depth).
"""

from __future__ import annotations

from typing import Any

from pyserving import __version__
from pyserving.core.states import MODEL_STATES

from . import openapi_v2

_ERROR = {"$ref": "#/components/schemas/Error"}
_SELECTORS = {"": [], "/versions/{version}": ["version"], "/labels/{label}": ["label"]}
_PARAMS = {  # examples: TF Serving's half_plus_two test model, version 123 (a label is set in the config)
    "model_name": {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"},
                   "example": "half_plus_two"},
    # An int64, as TF Serving reads it: a longer number is answered 400 ("Failed to convert version").
    "version": {"name": "version", "in": "path", "required": True,
                "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1},
                "example": 123},
    "label": {"name": "label", "in": "path", "required": True, "schema": {"type": "string"}, "example": "stable"},
}
_VERBS = {"predict": ("PredictRequest", "PredictResponse"),
          "classify": ("ExampleRequest", "ClassifyResponse"),
          "regress": ("ExampleRequest", "RegressResponse")}
_EXAMPLES = {"predict": {"instances": [1.0, 2.0, 5.0]},  # TF Serving's README quickstart
             "classify": {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]},
             "regress": {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(c): _json(_ERROR, _WHY.get(c, "The request can't be served; `error` says why")) for c in codes}


_WHY = {400: "Invalid request (body, signature, version number or label); `error` says why",
        404: "No such model or version, or a malformed URL (`Malformed request: ...`)",
        408: "The body did not arrive in time", 413: "The body is larger than --rest_api_max_request_bytes",
        501: "The model can't run this request", 504: "Timed out (--rest_api_timeout_in_ms)"}
_UNAVAILABLE = {**_json(_ERROR, "Overloaded, no version available yet, or the version is unloading: retry"),
                "headers": {"Retry-After": {"description": "Seconds to wait before retrying (overload refusals)",
                                            "schema": {"type": "integer"}}}}


def _model_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for selector, extra in _SELECTORS.items():
        params = [_PARAMS["model_name"]] + [_PARAMS[p] for p in extra]
        base = "/v1/models/{model_name}" + selector
        paths[base] = {"get": {"summary": "Model status", "parameters": params, "responses": {
            "200": _json({"$ref": "#/components/schemas/Status"}, "The versions and their states"),
            **_errors(400, 404)}}}
        paths[base + "/metadata"] = {"get": {"summary": "Model metadata (signature defs)", "parameters": params,
                                             "responses": {"200": _json({"$ref": "#/components/schemas/Metadata"},
                                                                        "model_spec and metadata"),
                                                           **_errors(400, 404), "503": _UNAVAILABLE}}}
        paths[base + "/ready"] = {"get": {"summary": "200 while a matching version is AVAILABLE",
                                          "parameters": params, "responses": {
            "200": _json({"type": "object", "required": ["ready", "model_spec"], "properties": {
                "ready": {"type": "boolean", "enum": [True]}, "model_spec": {"type": "object", "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"}}}}}, "Ready"),
            "503": _json({"type": "object", "required": ["ready", "error"], "properties": {
                "ready": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}}}, "Not ready"),
            **_errors(400, 404)}}}
        for verb, (request, response) in _VERBS.items():
            paths[f"{base}:{verb}"] = {"post": {
                "summary": verb.capitalize(), "parameters": params,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{request}"}, "example": _EXAMPLES[verb]}}},
                "responses": {"200": _json({"$ref": f"#/components/schemas/{response}"}, "The result"),
                              **_errors(400, 404, 408, 413, 501, 504), "503": _UNAVAILABLE}}}
    return paths


MODEL_STATE = {"type": "string", "enum": list(MODEL_STATES), "description": (
    "The model as a whole: LOADED (a version serves), LOADING, UNLOADED (under a budget of loaded "
    "models: loads on its first request) or UNAVAILABLE (its versions failed to load, or none found)")}


def _schemas() -> dict[str, Any]:
    model_state = MODEL_STATE
    tensor: dict = {"description": "A tensor as nested JSON arrays (or a scalar); "
                                   "binary strings as {\"b64\": ...}"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Status": {"type": "object", "required": ["model_version_status"], "properties": {
            "model_version_status": {"type": "array", "items": {
                "type": "object", "required": ["version", "state", "status"], "properties": {
                    "version": {"type": "string"},
                    "state": {"type": "string",
                              "enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                    "status": {"type": "object", "properties": {"error_code": {"type": "string"},
                                                                "error_message": {"type": "string"}}}}}}}},
        "ModelList": {"type": "object", "required": ["models"], "properties": {
            "models": {"type": "array", "items": {"type": "string"}},
            "model_version_status": {"type": "object",
                                     "additionalProperties": {"type": "array", "items": {"type": "object"}}},
            "model_state": {"type": "object", "additionalProperties": model_state}}},
        **_status_schemas(),
        "Metadata": {"type": "object", "required": ["model_spec", "metadata"], "properties": {
            "model_spec": {"type": "object", "required": ["name", "version"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"}, "signature_name": {"type": "string"}}},
            "metadata": {"type": "object", "required": ["signature_def"], "properties": {
                "signature_def": {"type": "object", "required": ["signature_def"], "properties": {
                    "signature_def": {"type": "object", "additionalProperties": {"type": "object"}}}}}}}},
        # Exactly one of "instances" (rows) and "inputs" (columns), as TF Serving requires.
        "PredictRequest": {"type": "object", "properties": {
            "signature_name": {"type": "string"}, "instances": tensor, "inputs": tensor},
            "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}]},
        "PredictResponse": {"type": "object", "properties": {"predictions": tensor, "outputs": tensor},
                            "oneOf": [{"required": ["predictions"]}, {"required": ["outputs"]}]},
        "ExampleRequest": {"type": "object", "required": ["examples"], "properties": {
            "signature_name": {"type": "string"}, "context": {"type": "object"},
            "examples": {"type": "array", "items": {"type": "object"}}}},
        # "results", as TF Serving's server writes it (its REST API page says "result").
        "ClassifyResponse": {"type": "object", "required": ["results"], "properties": {"results": {
            "type": "array", "description": "Per example, its [label, score] pairs",
            "items": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}}}}},
        "RegressResponse": {"type": "object", "required": ["results"], "properties": {"results": {
            "type": "array", "items": {"type": "number"}}}},
    }


def _status_schemas() -> dict[str, Any]:
    """GET /v1/status (StatusSummary: every model in a line) and ?model=NAME (StatusDetails)."""
    def obj(required: list[str], **properties) -> dict:
        return {"type": "object", "required": required, "properties": properties}
    integer, number, string = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    # OpenAPI 3.0's "nullable" is no JSON Schema: a field that may be null is left untyped.
    maybe = {"description": "A number, or null when there is none (no request in the window)"}
    tensor = obj(["alias", "dtype", "shape"], alias=string, tensor=string, dtype=string,
                 shape={"description": "Dimension sizes (-1: any size), or null for an unknown rank"})
    served = {"description": "The version requests get, or null if none is available"}
    problem = {"description": "Why no version can serve (only for an UNAVAILABLE model), or null"}
    summary = obj(
        ["server", "window_seconds", "models"],
        server=obj(["version", "uptime_seconds", "workers"], version=string, uptime_seconds=number,
                   workers=integer),
        window_seconds=number, refresh_ms=integer,
        models={"type": "array", "items": obj(
            ["name", "state", "versions", "requests"], name=string, state=MODEL_STATE, served_version=served,
            problem=problem, versions={"type": "integer", "description": "How many versions the model has"},
            memory_bytes={"description": "Under a budget of loaded models: its estimated memory, else null"},
            requests=obj(["total", "errors", "in_flight"], total=integer, errors=integer, in_flight=integer,
                         per_second=maybe, latency_ms=maybe, p50_ms=maybe, mean_latency_ms=maybe))})
    details = obj(
        ["name", "state", "labels", "versions", "signatures"],
        name=string, state=MODEL_STATE, labels={"type": "object", "additionalProperties": integer},
        served_version=served, problem=problem,
        versions={"type": "array", "items": obj(
            ["version", "state", "error"], version=integer, requests=integer,
            state={"type": "string", "enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
            error={"description": "The load error (code: message), or null"})},
        signatures={"type": "array", "items": obj(
            ["name", "inputs", "outputs"], name=string, method=string,
            inputs={"type": "array", "items": tensor}, outputs={"type": "array", "items": tensor})})
    return {"StatusSummary": summary, "StatusDetails": details}


def document() -> dict[str, Any]:
    readiness = {"type": "object", "required": ["ready", "models"], "properties": {
        "ready": {"type": "boolean"}, "models": {"type": "object", "additionalProperties": {"type": "boolean"}}}}
    paths = {
        "/v1/models": {"get": {"summary": "Every configured model with its versions and states",
                               "responses": {"200": _json({"$ref": "#/components/schemas/ModelList"}, "Models")}}},
        **_model_paths(),
        "/readyz": {"get": {"summary": "200 once every configured model has an AVAILABLE version", "responses": {
            "200": _json(readiness, "All ready"), "503": _json(readiness, "Some not ready")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(
            {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}, "Alive")}}},
        "/v1/openapi.json": {"get": {"summary": "This document",
                                     "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
        "/": {"get": {"summary": "Status page: models, versions, errors, labels, signatures, request rates",
                      "responses": {"200": {"description": "An HTML page refreshing itself from /v1/status",
                                            "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/v1/status": {"get": {
            "summary": "What the status page shows, as JSON: every model in a line, or one model in full",
            "parameters": [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "A configured model: its versions, labels and signatures"}],
            "responses": {
                "200": _json({"oneOf": [{"$ref": "#/components/schemas/StatusSummary"},
                                        {"$ref": "#/components/schemas/StatusDetails"}]},
                             "Every model's state and traffic, or the one model's details"),
                "404": _json({"$ref": "#/components/schemas/Error"}, "No such model is configured")}}},
        **openapi_v2.paths(),
    }
    return {"openapi": "3.0.3",
            "info": {"title": "pyserving REST API (TensorFlow Serving compatible, and the Open Inference Protocol)",
                     "version": __version__},
            "paths": paths, "components": {"schemas": {**_schemas(), **openapi_v2.schemas()}}}
