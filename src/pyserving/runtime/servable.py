"""The one interface every kind of loaded model version answers to.

A servable is a SavedModel in its own Session, a TFLite interpreter pool, or a
``tf.saved_model.load`` object: the data plane, the batcher and warmup see
only this protocol (signatures, ``run``, ``close``), as TF Serving's request
code sees only ``Session::Run``. Signature metadata always comes from the
stored ``SignatureDef`` protos, so clients see exactly what was exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ..codecs.dtypes import dtype_name, from_numpy_dtype
from ..errors import Code, ServingError

INIT_OP_SIGNATURE = "__saved_model_init_op"
DEFAULT_SIGNATURE = "serving_default"  # what an empty signature_name means


@dataclass(frozen=True)
class TensorSpec:
    alias: str
    tensor_name: str
    dtype: int  # tensorflow DataType enum
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def shape_text(self) -> str:
        return "<unknown rank>" if self.shape is None else "[" + ",".join(map(str, self.shape)) + "]"


@dataclass(frozen=True)
class Signature:
    key: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


class Servable(Protocol):
    """A loaded version. ``run`` is called from many request threads at once."""

    path: str
    runtime: str  # which kind: "session", "function", "tflite" (logged at load)

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """The runnable signatures, by key."""

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        """The SignatureDef protos as stored (what metadata answers with)."""

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Feed ``inputs`` (by alias) and fetch ``output_filter`` (all outputs when empty)."""

    def close(self) -> None:
        """Release the model's memory; called once no request holds the version."""


def tensor_spec(alias: str, info: Any) -> TensorSpec:
    """A TensorSpec from a TensorInfo proto."""
    shape = None
    if info.HasField("tensor_shape") and not info.tensor_shape.unknown_rank:
        shape = tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, tensor_name=info.name, dtype=info.dtype, shape=shape)


def signature_from_def(key: str, sig_def: Any) -> Signature:
    """A Signature from a SignatureDef proto."""
    return Signature(
        key=key,
        method_name=sig_def.method_name,
        inputs={a: tensor_spec(a, t) for a, t in sig_def.inputs.items()},
        outputs={a: tensor_spec(a, t) for a, t in sig_def.outputs.items()},
    )


def runnable_signatures(signature_defs: Mapping[str, Any]) -> dict[str, Signature]:
    """Every stored signature a request may name (the init op is not one)."""
    return {k: signature_from_def(k, s) for k, s in signature_defs.items() if k != INIT_OP_SIGNATURE}


# ---- TF Serving's request checks, shared by the data plane and warmup ----------

def find_signature(servable: Servable, name: str) -> Signature:
    """The named signature (FAILED_PRECONDITION naming the ones there are)."""
    try:
        return servable.signatures[name]
    except KeyError:
        raise ServingError.failed_precondition(
            f"Serving signature key \"{name}\" not found. The model has: "
            f"{', '.join(sorted(servable.signatures)) or 'no signatures'}") from None


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    """TF Serving's checks: every alias given and no other, dtypes exact. Shapes are the graph's
    to judge (a signature's declared shapes are documentation), as in TF Serving."""
    expected, sent = set(signature.inputs), set(inputs)
    if expected != sent:
        raise ServingError.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(expected))}}}). "
            f"Sent extra: {{{', '.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{', '.join(sorted(expected - sent))}}}.")
    for alias, array in inputs.items():
        spec = signature.inputs[alias]
        try:
            given = from_numpy_dtype(array.dtype).enum
        except TypeError:
            given = -1
        if given != spec.dtype:
            given_name = dtype_name(given) if given >= 0 else str(array.dtype)
            raise ServingError.invalid_argument(
                f"Expects arg[{alias}] to be {spec.dtype_name} but {given_name} is provided")


def validate_output_filter(signature: Signature, output_filter: Sequence[str]) -> None:
    """Every alias an output of the signature, none twice."""
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{', '.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise ServingError.invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


_NOISE = ("Graph execution error", "Detected at node", "Stack trace", "Traceback", "Function call stack",
          "File \"")


def op_error_message(message: str) -> str:
    """The reason out of a TF error message, without its graph trace and node dumps."""
    text = (message or "").strip()
    for paragraph in text.split("\n\n"):
        lines = [line for line in paragraph.strip().splitlines()
                 if line.strip() and not line.strip().startswith("[[")]
        if lines and not lines[0].startswith(_NOISE):
            return " ".join(line.strip() for line in lines)[:2000]
    return text[:2000]


def run_error(e: Exception) -> ServingError:
    """A model call's failure as the client sees it: a TensorFlow OpError with its code and its
    message's first line. A message pybind could not decode arrives as UnicodeDecodeError and
    loses its code: TensorFlow echoed a client's bytes that are not UTF-8 (ParseExample of a
    garbage string), so it is the request's fault, and the bytes are shown escaped."""
    if isinstance(e, UnicodeDecodeError):
        text = bytes(e.object).decode("utf-8", "backslashreplace")
        return ServingError.invalid_argument(op_error_message(text) or "The model refused the input")
    return ServingError(Code(e.error_code), op_error_message(e.message) or type(e).__name__)


def first_line(e: BaseException) -> str:
    """The first paragraph of an exception's message, for load errors; a paragraph that ends
    in a colon ("... Original error:") is followed by the reason it announces."""
    text = (getattr(e, "message", None) or str(e) or type(e).__name__).strip()
    head, _, rest = text.partition("\n\n")
    if head.rstrip().endswith(":") and rest.strip():
        return f"{head.rstrip()} {op_error_message(rest)}"
    return head
