"""Triton's model-configuration and statistics extensions, on TF Serving's models: what gRPC and
REST share.

Triton's perf_analyzer and Model Analyzer read a model's configuration (its inputs, outputs and
max_batch_size) and its statistics before they send a request. A configuration here is made from
what the served version is: its default signature's tensors (as Triton writes them: the batch
dimension left out of ``dims`` when ``max_batch_size`` > 0), ``max_batch_size`` from the batching
settings (0 without batching), the platform and backend of its runtime. Statistics come from the
data plane (observability/statistics.py), per AVAILABLE version.
"""

from __future__ import annotations

from typing import Any

from pyserving.core.states import VersionState
from pyserving.errors import ServingError
from pyserving.serving.dataplane import DataPlane, ModelSpec

from . import open_inference as v2

# Triton's DataType enum (model_config.proto) by its JSON name: its numbers on the wire.
DATA_TYPES = {"TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4, "TYPE_UINT64": 5,
              "TYPE_INT8": 6, "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10,
              "TYPE_FP32": 11, "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14}
BACKENDS = {"python": "python", "tensorflow_tflite": "tflite"}  # by V2 platform; "tensorflow" otherwise


def data_type_name(datatype: str) -> str:
    """Triton's name for a V2 datatype ("FP32" -> "TYPE_FP32"; BYTES is Triton's TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


async def model_config(dataplane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """Triton's ModelConfig of the version a request names (the latest if none), as JSON."""
    metadata = await v2.model_metadata(dataplane, name, version)
    batch = dataplane.max_batch_size(v2.model_spec(name, version))

    def tensors(which: str) -> list[dict[str, Any]]:
        return [{"name": t["name"], "data_type": data_type_name(t["datatype"]),
                 "dims": t["shape"][1:] if batch and len(t["shape"]) > 1 else t["shape"]}
                for t in metadata[which]]
    return {"name": name, "platform": metadata["platform"],
            "backend": BACKENDS.get(metadata["platform"], "tensorflow"), "max_batch_size": batch,
            "input": tensors("inputs"), "output": tensors("outputs")}


async def model_statistics(dataplane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """Triton's statistics of a model's AVAILABLE versions (that version only, if one is named;
    every configured model's, if no model is)."""
    number = v2.parse_version(version)
    if name and name not in dataplane.readiness():
        raise ServingError.not_found(f"Model '{name}' is not configured")
    entries = []
    for model in [name] if name else sorted(dataplane.readiness()):
        statuses = await dataplane.status(ModelSpec(model))
        available = sorted(s.version for s in statuses if s.state == VersionState.AVAILABLE)
        if number is not None:
            if number not in available:
                raise ServingError.not_found(f"Version {number} of model '{model}' is not available")
            available = [number]
        entries += [dataplane.statistics.of(model, v).as_json(model, v) for v in available]
        dataplane.statistics.forget(model, {s.version for s in statuses})
    return {"model_stats": entries}
