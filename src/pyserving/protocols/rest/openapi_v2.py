"""The Open Inference Protocol's REST routes in the server's OpenAPI document (openapi.py), with
every status pyserving answers them with (the protocol's own document lists 200 and 400 only)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"},
         "example": "half_plus_two"}
_VERSION = {"name": "model_version", "in": "path", "required": True, "example": "123",
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}
_INFER_EXAMPLE = {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [1.0, 2.0, 5.0]}]}
_WHY = {400: "Invalid request (body, tensor, datatype, version); `error` says why",
        401: "A control-plane call without the admin token (--admin_token_file)",
        404: "No such model or version", 408: "The body did not arrive in time",
        413: "The body is larger than --rest_api_max_request_bytes",
        500: "A load that did not make the model available: `error` names the versions and why",
        501: "Turned off (--enable_config_reload_rpc=false), or the model can't run this request",
        503: "Overloaded, or no version available yet: retry", 504: "Timed out (--rest_api_timeout_in_ms)"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(c): _json(_ERROR, _WHY[c]) for c in codes}


def _flag(key: str, value: Any = None) -> dict:
    flag: dict = {"type": "boolean"}
    if value is not None:
        flag["enum"] = [value]
    return {"type": "object", "required": [key], "properties": {key: flag}}


def _model_ready(ready: bool) -> dict:
    return {"type": "object", "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean", "enum": [ready]}}}


def paths() -> dict[str, Any]:
    result: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "V2: server live", "responses": {
            "200": _json(_flag("live", True), "Live")}}},
        "/v2/health/ready": {"get": {"summary": "V2: every configured model has an AVAILABLE version", "responses": {
            "200": _json(_flag("ready", True), "Ready"), "400": _json(_flag("ready", False), "Not ready")}}},
        "/v2": {"get": {"summary": "V2: server metadata", "responses": {
            "200": _json({"$ref": "#/components/schemas/V2ServerMetadata"}, "Name, version, extensions")}}},
        "/v2/repository/index": {"post": {
            "summary": "V2 model repository: every configured model and version with its state",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
            "responses": {"200": _json({"type": "array", "items": {"$ref": "#/components/schemas/V2ModelIndex"}},
                                       "The index"), **_errors(400, 413)}}},
        "/v2/models/stats": {"get": {"summary": "V2 (Triton's statistics extension): every model's", "responses": {
            "200": _json({"$ref": "#/components/schemas/V2Statistics"}, "Statistics")}}},
    }
    for action in ("load", "unload"):
        result[f"/v2/repository/models/{{model_name}}/{action}"] = {"post": {
            "summary": f"V2 model repository: {action} a configured model (control plane)", "parameters": [_NAME],
            "responses": {"200": _json(_flag(action, True), "Done"),
                          **_errors(400, 401, 404, 500, 501)}}}
    for prefix, params in (("/v2/models/{model_name}", [_NAME]),
                           ("/v2/models/{model_name}/versions/{model_version}", [_NAME, _VERSION])):
        result[prefix] = {"get": {"summary": "V2: model metadata (the default signature)", "parameters": params,
                                  "responses": {"200": _json({"$ref": "#/components/schemas/V2ModelMetadata"},
                                                             "Metadata"), **_errors(400, 404, 503)}}}
        result[prefix + "/config"] = {"get": {
            "summary": "V2 (Triton's model-configuration extension): inputs, outputs, max_batch_size",
            "parameters": params, "responses": {"200": _json({"$ref": "#/components/schemas/V2ModelConfig"},
                                                               "The configuration"), **_errors(400, 404, 503)}}}
        result[prefix + "/stats"] = {"get": {
            "summary": "V2 (Triton's statistics extension): the model's AVAILABLE versions", "parameters": params,
            "responses": {"200": _json({"$ref": "#/components/schemas/V2Statistics"}, "Statistics"),
                          **_errors(400, 404)}}}
        result[prefix + "/ready"] = {"get": {"summary": "V2: model ready", "parameters": params, "responses": {
            "200": _json(_model_ready(True), "Ready"),
            "400": _json({"oneOf": [_model_ready(False), _ERROR]}, "Not ready, or an invalid version"),
            **_errors(404)}}}
        result[prefix + "/infer"] = {"post": {
            "summary": "V2: inference (JSON tensors; binary ones with Inference-Header-Content-Length)",
            "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/V2InferRequest"}, "example": _INFER_EXAMPLE}}},
            "responses": {"200": _json({"$ref": "#/components/schemas/V2InferResponse"}, "The outputs"),
                          **_errors(400, 404, 408, 413, 501, 503, 504)}}}
    return result


def schemas() -> dict[str, Any]:
    string, shape = {"type": "string"}, {"type": "array", "items": {"type": "integer"}}
    tensor_meta = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": string, "datatype": string, "shape": shape}}
    parameters = {"type": "object"}
    config_tensor = {"type": "object", "required": ["name", "data_type", "dims"],
                     "properties": {"name": string, "data_type": string, "dims": shape}}
    duration = {"type": "object", "required": ["count", "ns"],
                "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}}
    version_stats = {"type": "object", "required": ["name", "version", "inference_count", "inference_stats"],
                     "properties": {"name": string, "version": string, "last_inference": {"type": "integer"},
                                    "inference_count": {"type": "integer"}, "execution_count": {"type": "integer"},
                                    "inference_stats": {"type": "object", "additionalProperties": duration},
                                    "batch_stats": {"type": "array"}}}
    return {
        "V2ModelConfig": {"type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"],
                          "properties": {"name": string, "platform": string, "backend": string,
                                         "max_batch_size": {"type": "integer"},
                                         "input": {"type": "array", "items": config_tensor},
                                         "output": {"type": "array", "items": config_tensor}}},
        "V2Statistics": {"type": "object", "required": ["model_stats"],
                         "properties": {"model_stats": {"type": "array", "items": version_stats}}},
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": string, "version": string, "extensions": {"type": "array", "items": string}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                            "properties": {"name": string, "versions": {"type": "array", "items": string},
                                           "platform": string, "inputs": {"type": "array", "items": tensor_meta},
                                           "outputs": {"type": "array", "items": tensor_meta}}},
        "V2ModelIndex": {"type": "object", "required": ["name", "version", "state", "reason"], "properties": {
            "name": string, "version": string, "reason": string,
            "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]}}},
        "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": string, "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                    "name": string, "shape": shape, "datatype": string, "parameters": parameters,
                    "data": {"description": "Flat or nested row-major values"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": string, "parameters": parameters}}}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": string, "model_version": string, "id": string, "parameters": parameters,
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                    "name": string, "shape": shape, "datatype": string, "parameters": parameters,
                    "data": {"type": "array"}}}}}},
    }
