"""A Python client for pyserving and TensorFlow Serving, over gRPC or REST: numpy in, numpy out.

    from pyserving.client import Client
    with Client("localhost:8500") as c:                     # gRPC; Client(url, protocol="rest") for REST
        outputs = c.predict("mnist", {"images": batch}, signature_name="predict_images")
        c.classify("m", [{"x": 1.0}]), c.regress("m", [{"x": 1.0}]), c.status("m"), c.metadata("m")

Errors from the server raise ``ServingError`` with the gRPC status code (REST's HTTP status mapped
back), so both protocols fail alike. Deadlines: ``timeout`` seconds per call (default 30).
TLS: ``root_certificates`` (PEM bytes) for gRPC; an https:// URL for REST (``verify`` as requests).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import Code, ServingError

Tensors = Mapping[str, Any]


class Client:
    def __init__(self, target: str, protocol: str = "grpc", timeout: float = 30.0,
                 root_certificates: bytes | None = None, verify: bool | str = True) -> None:
        if protocol not in ("grpc", "rest"):
            raise ValueError(f"protocol must be grpc or rest, not {protocol!r}")
        self.protocol, self.timeout = protocol, timeout
        self._signatures: dict[tuple, dict[str, Any]] = {}
        if protocol == "grpc":
            import grpc
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

            options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            self._channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
                             if root_certificates else grpc.insecure_channel(target, options))
            self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        else:
            import requests

            self._url = target if "://" in target else f"http://{target}"
            self._http = requests.Session()
            self._http.verify = verify

    # ---- the API ------------------------------------------------------------------

    def predict(self, model: str, inputs: Tensors | np.ndarray, signature_name: str = "",
                version: int | None = None, label: str | None = None,
                output_filter: Sequence[str] = (), timeout: float | None = None) -> dict[str, np.ndarray]:
        """Named input arrays (or one array for a single-input signature) -> named output arrays,
        in the signature's dtypes (strings as bytes), the same over gRPC and REST."""
        if not isinstance(inputs, Mapping):  # one array: the signature's only input, by its name
            signature = self._signature(model, version, label, signature_name, timeout)
            names = list(signature.get("inputs", {}))
            if len(names) != 1:
                raise ValueError(f"Signature {signature_name or 'serving_default'!r} takes {len(names)} inputs "
                                 f"({', '.join(names)}): pass them by name, {{'input_name': array}}")
            inputs = {names[0]: inputs}
        if self.protocol == "rest":
            body = {"signature_name": signature_name, "inputs": {k: _json_tensor(v) for k, v in inputs.items()}}
            if output_filter:
                body["output_filter"] = list(output_filter)
            outputs = self._post(model, version, label, "predict", body, timeout)["outputs"]
            signature = self._signature(model, version, label, signature_name, timeout)
            if not isinstance(outputs, dict):  # REST prints a lone output without its name
                outputs = {(list(output_filter) or list(signature["outputs"]))[0]: outputs}
            return {k: _rest_array(v, signature["outputs"].get(k, {}).get("dtype", "")) for k, v in outputs.items()}
        from tensorflow_serving.apis import predict_pb2

        from .codecs import tensor_proto  # TensorFlow's protos: imported by gRPC calls only

        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        _spec(request.model_spec, model, version, label, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tensor_proto.from_numpy(np.asarray(value), tensor_content=True))
        response = self._grpc(self._predictions.Predict, request, timeout)
        return {k: tensor_proto.to_numpy(v, f"output '{k}'") for k, v in response.outputs.items()}

    def classify(self, model: str, examples: Sequence[Mapping[str, Any]], signature_name: str = "",
                 version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """tf.Examples as dicts of feature -> value(s); each example's (class label, score) pairs."""
        if self.protocol == "rest":
            body = {"signature_name": signature_name, "examples": [_jsonable(e) for e in examples]}
            result = self._post(model, version, label, "classify", body, timeout)["results"]
            return [[(str(c), float(s)) for c, s in row] for row in result]
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        _spec(request.model_spec, model, version, label, signature_name)
        request.input.example_list.examples.extend(_example(e) for e in examples)
        response = self._grpc(self._predictions.Classify, request, timeout)
        return [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]

    def regress(self, model: str, examples: Sequence[Mapping[str, Any]], signature_name: str = "",
                version: int | None = None, label: str | None = None, timeout: float | None = None) -> np.ndarray:
        if self.protocol == "rest":
            body = {"signature_name": signature_name, "examples": [_jsonable(e) for e in examples]}
            return np.asarray(self._post(model, version, label, "regress", body, timeout)["results"], np.float32)
        from tensorflow_serving.apis import regression_pb2

        request = regression_pb2.RegressionRequest()
        _spec(request.model_spec, model, version, label, signature_name)
        request.input.example_list.examples.extend(_example(e) for e in examples)
        response = self._grpc(self._predictions.Regress, request, timeout)
        return np.asarray([r.value for r in response.result.regressions], np.float32)

    def status(self, model: str, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[dict[str, Any]]:
        """[{"version": int, "state": "AVAILABLE", "error": "" }] for each version."""
        if self.protocol == "rest":
            body = self._get(_path(model, version, label), timeout)
            return [{"version": int(v["version"]), "state": v["state"],
                     "error": v.get("status", {}).get("error_message", "")} for v in body["model_version_status"]]
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        _spec(request.model_spec, model, version, label, "")
        response = self._grpc(self._models.GetModelStatus, request, timeout)
        return [{"version": v.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(v.state),
                 "error": v.status.error_message} for v in response.model_version_status]

    def metadata(self, model: str, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        """The signature defs, as TF Serving's REST API prints them."""
        if self.protocol == "rest":
            return self._get(_path(model, version, label) + "/metadata", timeout)["metadata"]["signature_def"]
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _spec(request.model_spec, model, version, label, "")
        response = self._grpc(self._predictions.GetModelMetadata, request, timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return json_format.MessageToDict(signatures, preserving_proto_field_name=True)

    def _signature(self, model: str, version: int | None, label: str | None, signature_name: str,
                   timeout: float | None) -> dict[str, Any]:
        """The signature's metadata (inputs and outputs with dtypes), asked once per client."""
        key = (model, version, label, signature_name)
        if key not in self._signatures:
            signatures = self.metadata(model, version, label, timeout)["signature_def"]
            name = signature_name or "serving_default"
            if name not in signatures:
                raise ServingError(Code.INVALID_ARGUMENT, f"Serving signature name: \"{name}\" not found "
                                                          "in signature def")
            self._signatures[key] = signatures[name]
        return self._signatures[key]

    def close(self) -> None:
        (self._channel if self.protocol == "grpc" else self._http).close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ------------------------------------------------------------------

    def _grpc(self, method, request, timeout: float | None):
        import grpc

        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise ServingError(Code(e.code().value[0]), e.details() or e.code().name) from None

    def _post(self, model: str, version: int | None, label: str | None, verb: str, body: dict,
              timeout: float | None) -> dict:
        return self._answer(self._http.post(f"{self._url}{_path(model, version, label)}:{verb}", json=body,
                                            timeout=timeout or self.timeout))

    def _get(self, path: str, timeout: float | None) -> dict:
        return self._answer(self._http.get(self._url + path, timeout=timeout or self.timeout))

    @staticmethod
    def _answer(response) -> dict:
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServingError(_HTTP_CODES.get(response.status_code, Code.UNKNOWN), message)
        return response.json()


_HTTP_CODES = {400: Code.INVALID_ARGUMENT, 404: Code.NOT_FOUND, 408: Code.DEADLINE_EXCEEDED,
               409: Code.ALREADY_EXISTS, 412: Code.FAILED_PRECONDITION, 413: Code.RESOURCE_EXHAUSTED,
               429: Code.RESOURCE_EXHAUSTED, 500: Code.INTERNAL, 501: Code.UNIMPLEMENTED,
               503: Code.UNAVAILABLE, 504: Code.DEADLINE_EXCEEDED}


def _path(model: str, version: int | None, label: str | None) -> str:
    return f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + \
        (f"/labels/{label}" if label else "")


def _spec(spec, model: str, version: int | None, label: str | None, signature_name: str) -> None:
    spec.name = model
    spec.signature_name = signature_name
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label


# TF Serving's REST API answers JSON numbers; the signature says which dtype they were.
_REST_DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16, "DT_INT8": np.int8,
                "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_UINT8": np.uint8,
                "DT_UINT16": np.uint16, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64, "DT_BOOL": np.bool_,
                "DT_COMPLEX64": np.complex64, "DT_COMPLEX128": np.complex128}


def _nested(fn: Any, value: Any) -> Any:
    """``fn`` applied to every leaf of nested lists."""
    return [_nested(fn, v) for v in value] if isinstance(value, list) else fn(value)


def _from_json_string(item: Any) -> Any:
    if isinstance(item, dict) and "b64" in item:
        return base64.b64decode(item["b64"])
    return item.encode("utf-8") if isinstance(item, str) else item


def _to_json_string(item: Any) -> Any:
    return {"b64": base64.b64encode(item).decode("ascii")} if isinstance(item, bytes) else item


def _rest_array(value: Any, dtype: str) -> np.ndarray:
    """A REST output as gRPC's client gets it: the model's dtype, strings as bytes."""
    if dtype == "DT_STRING":
        strings = _nested(_from_json_string, value)
        array = np.empty(np.shape(strings), dtype=object)
        array[...] = strings
        return array
    numpy = _REST_DTYPES.get(dtype)
    return np.asarray(value, dtype=numpy) if numpy is not None else np.asarray(value)


def _json_tensor(value: Any) -> Any:
    """An input array as REST's JSON takes it: bytes as {"b64": ...}."""
    array = np.asarray(value)
    return _nested(_to_json_string, array.tolist()) if array.dtype.kind in ("S", "O") else array.tolist()


def _values(value: Any) -> list:
    return list(np.asarray(value).reshape(-1).tolist())


def _example(features: Mapping[str, Any]):
    """A dict of feature -> value(s) as a tf.Example: floats, ints or bytes/str lists."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, value in features.items():
        values = _values(value) if not isinstance(value, (str, bytes)) else [value]
        feature = example.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return example


def _jsonable(features: Mapping[str, Any]) -> dict:
    """Example features for REST's JSON: bytes as {"b64": ...}, as TF Serving's REST API takes them."""
    return {k: _to_json_string(v) if isinstance(v, (str, bytes, int, float)) else
            [_to_json_string(x) for x in _values(v)] for k, v in features.items()}
