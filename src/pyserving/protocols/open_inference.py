"""The Open Inference Protocol (KServe V2) on TF Serving's models: what gRPC and REST share.

A V2 model is a served model and a V2 version its version number (as text); an inference runs
the signature named by the request's ``signature_name`` parameter (``serving_default``
otherwise) through the same data plane as Predict, so batching, admission, metrics (API
``infer``), the access log and request logging are TF Serving's. Model metadata describes that
default signature. TF Serving's version labels have no V2 form: a version must be a number.
docs/open_inference.md has the whole mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from pyserving import __version__
from pyserving.codecs import open_inference as v2
from pyserving.codecs.dtypes import from_numpy_dtype
from pyserving.core.states import VersionState
from pyserving.errors import ServingError
from pyserving.runtime.servable import Signature
from pyserving.serving.dataplane import DataPlane, Decoder, ModelSpec

SERVER_NAME = "pyserving"
# model_configuration and statistics: Triton's (triton_extensions.py), which its tools read first.
EXTENSIONS = ("binary_tensor_data", "parameters", "model_repository", "model_configuration", "statistics")
SIGNATURE_PARAMETER = "signature_name"
PLATFORMS = {"tflite": "tensorflow_tflite", "python": "python"}  # by runtime kind; SavedModels otherwise


class Repository(Protocol):
    """The model-repository extension (server.repository.ModelRepository): control-plane calls."""

    def unloaded(self) -> set[str]: ...

    async def index(self) -> list[dict[str, str]]: ...

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


MAX_DIGITS = 19  # any number an int64 holds


def ascii_number(text: str) -> int | None:
    """The number a client's text gives, or None: ASCII digits only (str.isdigit() also takes '²',
    which int() refuses), and few enough that int() is cheap and never refuses them."""
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS):
        return None
    return int(text)


def parse_version(text: str | None) -> int | None:
    """A V2 version: "" or None for the latest, else a version number."""
    if not text:
        return None
    number = ascii_number(text)
    if number is None:
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise ServingError.invalid_argument(
            f"Model version must be a version number, not {shown!r} (TF Serving's labels have no V2 form)")
    return number


def model_spec(name: str, version: str | None, parameters: Mapping[str, Any] | None = None) -> ModelSpec:
    if not name:
        raise ServingError.invalid_argument("The request names no model")
    signature = (parameters or {}).get(SIGNATURE_PARAMETER, "")
    if not isinstance(signature, str):
        raise ServingError.invalid_argument(f"Parameter '{SIGNATURE_PARAMETER}' must be a string")
    return ModelSpec(name, parse_version(version), None, signature)


def server_ready(dataplane: DataPlane) -> bool:
    """Ready for inference: every configured model has an AVAILABLE version."""
    return all(dataplane.readiness().values())


def model_ready(dataplane: DataPlane, name: str, version: str | None, repository: Repository | None = None) -> bool:
    """Whether the model (or that version) serves now; NOT_FOUND for a model not configured."""
    spec = model_spec(name, version)
    if repository is not None and name in repository.unloaded():
        return False
    if name not in dataplane.readiness():
        raise ServingError.not_found(f"Model '{name}' is not configured")
    try:
        dataplane.resolve(spec)
    except ServingError:
        return False
    return True


async def model_metadata(dataplane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """Name, AVAILABLE versions, platform, and the default signature's inputs and outputs."""
    spec = model_spec(name, version)
    await dataplane.ensure_loaded(spec)
    served, signature, runtime = dataplane.signature(spec)
    statuses = await dataplane.status(ModelSpec(name))
    versions = sorted(s.version for s in statuses if s.state == VersionState.AVAILABLE)
    return {"name": name, "versions": [str(v) for v in versions or [served]],
            "platform": PLATFORMS.get(runtime, "tensorflow_savedmodel"),
            "inputs": _tensor_metadata(signature.inputs if signature else {}),
            "outputs": _tensor_metadata(signature.outputs if signature else {})}


def _tensor_metadata(specs: Mapping) -> list[dict[str, Any]]:
    tensors = []
    for alias in sorted(specs):
        spec = specs[alias]
        datatype = v2.DATATYPE.get(spec.dtype)
        if datatype is None:  # a type V2 can't carry: left out rather than failing the whole answer
            continue
        shape = [-1] if spec.shape is None else [d if d >= 0 else -1 for d in spec.shape]
        tensors.append({"name": alias, "datatype": datatype, "shape": shape})
    return tensors


def decoder(model: str, tensors: Sequence[v2.WireTensor]) -> Decoder:
    """Inputs by name, each checked against the signature's datatype before it is decoded."""
    def decode(signature: Signature) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for tensor in tensors:
            spec = signature.inputs.get(tensor.name)
            if spec is None:
                raise ServingError.invalid_argument(
                    f"Unexpected inference input '{tensor.name}' for model '{model}'; signature "
                    f"'{signature.key}' takes {', '.join(sorted(signature.inputs)) or 'no inputs'}")
            if tensor.name in arrays:
                raise ServingError.invalid_argument(f"Inference input '{tensor.name}' is given twice")
            expected = v2.datatype_of(spec.dtype)
            if tensor.datatype != expected:
                raise ServingError.invalid_argument(
                    f"Inference input '{tensor.name}' has datatype {tensor.datatype}; model '{model}' "
                    f"expects {expected}")
            arrays[tensor.name] = v2.to_numpy(tensor)
        return arrays
    return decode


def output_tensors(outputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> list[OutputTensor]:
    """The outputs to answer with, in the order asked for (all of them, sorted, if none was)."""
    names = requested or sorted(outputs)
    return [OutputTensor(name, v2.datatype_of(_enum(outputs[name])), outputs[name].shape, outputs[name])
            for name in names]


def _enum(array: np.ndarray) -> int:
    return from_numpy_dtype(array.dtype).enum


def index_filter(entries: list[dict[str, str]], ready_only: bool) -> list[dict[str, str]]:
    return [e for e in entries if e["state"] == "READY"] if ready_only else entries
