"""TF Serving response protos for status and metadata, shared by gRPC and REST.

REST renders the very same protos as JSON, which is how TF Serving keeps the
two APIs in step.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from pyserving.core.states import VersionStatus
from pyserving.errors import ServingError

SIGNATURE_DEF_FIELD = "signature_def"


def status_response(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for s in statuses:
        entry = response.model_version_status.add(version=s.version, state=int(s.state))
        entry.status.SetInParent()  # TF Serving always reports a status, OK included
        if s.error is not None:
            entry.status.error_code = int(s.error.code)
            entry.status.error_message = s.error.message
    return response


def metadata_response(name: str, version: int, signature_defs: Mapping,
                      fields: Sequence[str]) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not fields:
        raise ServingError.invalid_argument(
            "GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != SIGNATURE_DEF_FIELD:
            raise ServingError.invalid_argument(f"Metadata field {f} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig_def in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(sig_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def to_json_dict(message) -> dict:
    """Proto JSON as TF Serving prints it: proto field names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    spec = to_json_dict(response.model_spec)
    spec.setdefault("signature_name", "")
    return {"model_spec": spec,
            "metadata": {SIGNATURE_DEF_FIELD: to_json_dict(signature_map)}}
