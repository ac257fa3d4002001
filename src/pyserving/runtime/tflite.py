"""TensorFlow Lite models (``--prefer_tflite_model``), as TF Serving's TfLiteSession serves them.

Signatures follow tflite_session.cc: SignatureDefs stored in the model's
``signature_defs_metadata`` are served as stored, each tensor name checked
against the model (falling back to the name without ``:N``, which TF1
converters stripped); a model without them gets a ``serving_default`` built
from its input and output tensors, aliased by name without ``:N`` and shaped by
their current ``dims``. Extension: TFLite's native SignatureDefs (TF2
converters) are served when there are no stored ones, shaped by
``shape_signature``; TF Serving ignores them and aliases tensors such as
``StatefulPartitionedCall:0``/``:1`` both as ``StatefulPartitionedCall``.

TF Serving links TFLite's ParseExample kernel; neither tf.lite nor LiteRT ships
it, so a ParseExampleV2 op reading a model input runs on TensorFlow's kernel
before the interpreter runs the rest of the graph.
"""

from __future__ import annotations

import logging
import queue
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from ..errors import Code, ServingError
from .servable import DEFAULT_SIGNATURE, first_line, run_error, runnable_signatures

# tf.lite.Interpreter warns on every construction that it will move to LiteRT; it still
# works, and LiteRT lacks nothing it has here (see the module docstring), so only this goes.
warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
                        category=UserWarning)

log = logging.getLogger("pyserving.runtime")

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # what tflite's signature_def_util writes
PARSE_EXAMPLE = b"ParseExampleV2"

_T = schema.TensorType
# TFLite's type names are TF's in capitals; resource and variant tensors aren't servable data.
_DTYPES = {v: tf.as_dtype(k.lower()).as_datatype_enum for k, v in vars(_T).items()
           if k.isupper() and k not in ("RESOURCE", "VARIANT") and hasattr(tf.dtypes, k.lower())}


@dataclass(frozen=True)
class _Plan:
    """How to run one signature: its tensor indices by alias."""

    inputs: Mapping[str, int]
    outputs: Mapping[str, int]
    # Native signatures may live in other subgraphs: TFLite's SignatureRunner runs them. Never mixed
    # with direct calls on one interpreter (a runner's reference trips tf.lite's internal-data guard).
    runner_key: str | None = None


# ---- reading the flatbuffer -----------------------------------------------------

def _name(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw or ""


def _legacy(name: str) -> str:
    return name.split(":", 1)[0]


def _tensor_info(tensor: Any, use_signature_shape: bool = False) -> Any:
    if tensor.type not in _DTYPES:
        raise ServingError(Code.INTERNAL, f"Unknown TfLite type: {tensor.type} (tensor {_name(tensor.name)})")
    info = meta_graph_pb2.TensorInfo(name=_name(tensor.name), dtype=_DTYPES[tensor.type])
    shape = tensor.shapeSignature if use_signature_shape and tensor.shapeSignature is not None else tensor.shape
    for size in (() if shape is None else shape):
        info.tensor_shape.dim.add(size=int(size))
    return info


def _buffer_bytes(model: Any, index: int) -> bytes:
    data = model.buffers[index].data
    return b"" if data is None else np.asarray(data, np.uint8).tobytes()


def _stored_signature_defs(model: Any) -> dict[str, Any]:
    """The SignatureDefs in the model's metadata: a flexbuffer map of key -> serialized proto."""
    for metadata in model.metadata or ():
        if _name(metadata.name) == SIGNATURE_DEFS_METADATA:
            entries = flexbuffers.GetRoot(_buffer_bytes(model, metadata.buffer)).AsMap
            return {key.AsKey: meta_graph_pb2.SignatureDef.FromString(bytes(value.AsStringBytes))
                    for key, value in zip(entries.Keys, entries.Values)}
    return {}


def _resolve(kind: str, alias: str, info: Any, tensors: Mapping[str, int]) -> int:
    """The tensor a stored signature names, by its name or its legacy name (TF Serving's FixTfLiteTensorName)."""
    for candidate in (info.name, _legacy(info.name)):
        if candidate in tensors:
            info.name = candidate
            return tensors[candidate]
    raise ServingError(Code.INTERNAL, f"Signature {kind} {alias} references an unknown tensor '{info.name}'")


def _signatures(model: Any, model_file: str) -> tuple[dict[str, Any], dict[str, _Plan]]:
    """SignatureDef protos and run plans: stored ones, else native ones, else TF Serving's default."""
    main = model.subgraphs[0]
    ins = {_name(main.tensors[i].name): int(i) for i in main.inputs}
    outs = {_name(main.tensors[i].name): int(i) for i in main.outputs}
    defs = _stored_signature_defs(model)
    plans = {key: _Plan({a: _resolve("input", a, t, ins) for a, t in sig_def.inputs.items()},
                        {a: _resolve("output", a, t, outs) for a, t in sig_def.outputs.items()})
             for key, sig_def in defs.items()}
    for native in ([] if defs else model.signatureDefs or ()):
        key, tensors = _name(native.signatureKey), model.subgraphs[native.subgraphIndex].tensors
        sig_def = defs[key] = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for m in native.inputs:
            sig_def.inputs[_name(m.name)].CopyFrom(_tensor_info(tensors[m.tensorIndex], True))
        for m in native.outputs:
            sig_def.outputs[_name(m.name)].CopyFrom(_tensor_info(tensors[m.tensorIndex], True))
        plans[key] = _Plan({_name(m.name): int(m.tensorIndex) for m in native.inputs},
                           {_name(m.name): int(m.tensorIndex) for m in native.outputs}, key)
    if not defs:
        # TF Serving's rule: tensors in name order, aliased by legacy name; on a clash the later one wins.
        log.warning("No signature def found in TFLite model %s. Generating one.", model_file)
        sig_def = defs[DEFAULT_SIGNATURE] = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for name in sorted(ins):
            sig_def.inputs[_legacy(name)].CopyFrom(_tensor_info(main.tensors[ins[name]]))
        for name in sorted(outs):
            sig_def.outputs[_legacy(name)].CopyFrom(_tensor_info(main.tensors[outs[name]]))
        plans[DEFAULT_SIGNATURE] = _Plan({_legacy(n): i for n, i in sorted(ins.items())},
                                         {_legacy(n): i for n, i in sorted(outs.items())})
    return defs, plans


# ---- ParseExampleV2 outside the interpreter ------------------------------------

def _constant(model: Any, tensor: Any) -> np.ndarray:
    raw = _buffer_bytes(model, tensor.buffer)
    shape = tuple(int(s) for s in (tensor.shape if tensor.shape is not None else ()))
    if tensor.type != _T.STRING:
        return np.frombuffer(raw, tf.dtypes.as_dtype(_DTYPES[tensor.type]).as_numpy_dtype).reshape(shape)
    # TFLite strings: count, count+1 offsets (int32), then the bytes.
    count = int(np.frombuffer(raw, np.int32, 1)[0])
    offsets = np.frombuffer(raw, np.int32, count + 1, 4)
    items = [raw[offsets[i]:offsets[i + 1]] for i in range(count)]
    return np.array(items, dtype=object).reshape(shape)


@dataclass
class _ParseExample:
    """A ParseExampleV2 node lifted out of the graph; calls return its outputs by tensor index."""

    serialized: int
    outputs: list[int]
    args: dict[str, Any]  # ParseExampleV2's other inputs and attributes, as the node had them

    def __call__(self, serialized: np.ndarray) -> dict[int, np.ndarray]:
        try:
            values = tf.raw_ops.ParseExampleV2(serialized=serialized, **self.args)
        except (tf.errors.OpError, UnicodeDecodeError) as e:
            raise run_error(e) from None
        flat = [t for group in values for t in (group if isinstance(group, list) else [group])]
        return {i: t.numpy() for i, t in zip(self.outputs, flat)}


def _lift_parse_example(data: bytes, model: Any) -> tuple[bytes, _ParseExample | None]:
    """The model without its ParseExampleV2 node (its outputs become inputs), and that node."""
    main = model.subgraphs[0]
    ops = [op for op in main.operators if model.operatorCodes[op.opcodeIndex].customCode == PARSE_EXAMPLE]
    if not ops:
        return data, None
    op, tensors = ops[0], main.tensors
    num_sparse = flexbuffers.Loads(np.asarray(op.customOptions, np.uint8).tobytes()).get("num_sparse", 0)
    dense = [int(i) for i in op.inputs[5:]]
    if len(ops) > 1 or op.inputs[0] not in main.inputs or len(op.outputs) != 3 * num_sparse + len(dense):
        raise ServingError(Code.UNIMPLEMENTED, "Only one ParseExampleV2 op reading a model input, without "
                                               "ragged features, is supported in TFLite models")
    # Constants become tensors once: converting them on every call made a 47 µs parse take 195 µs.
    keys = [tf.constant(_constant(model, tensors[op.inputs[i]]).reshape(-1), tf.string) for i in (2, 3)]
    dense_outputs = [tensors[i] for i in op.outputs[3 * num_sparse:]]
    parse = _ParseExample(int(op.inputs[0]), [int(i) for i in op.outputs], dict(
        names=tf.constant([], tf.string), sparse_keys=keys[0], dense_keys=keys[1],
        ragged_keys=tf.constant([], tf.string), num_sparse=num_sparse,
        dense_defaults=[tf.constant(_constant(model, tensors[i])) for i in dense],
        sparse_types=[_DTYPES[tensors[i].type] for i in op.outputs[num_sparse:2 * num_sparse]],
        ragged_value_types=[], ragged_split_types=[],
        dense_shapes=[[int(s) for s in (t.shapeSignature if t.shapeSignature is not None else t.shape)[1:]]
                      for t in dense_outputs]))
    main.operators.remove(op)
    still_read = {int(i) for other in main.operators for i in other.inputs}
    main.inputs = [int(i) for i in main.inputs if i != parse.serialized or i in still_read]
    main.inputs += [i for i in parse.outputs if i in still_read]
    main.outputs = [int(i) for i in main.outputs if i not in parse.outputs]
    return flatbuffer_utils.convert_object_to_bytearray(model), parse


# ---- serving ------------------------------------------------------------------

class _Slot:
    """One interpreter, used by one request at a time; input shapes tracked to resize only on change."""

    def __init__(self, content: bytes) -> None:
        self.interpreter = tf.lite.Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        self.shapes = {d["index"]: tuple(map(int, d["shape"])) for d in self.interpreter.get_input_details()}
        self.runners: dict[str, Any] = {}


class TfLiteServable:
    """One version: a bounded pool of interpreters; each request borrows one."""

    runtime = "tflite"

    def __init__(self, path: str, content: bytes, signature_defs: Mapping[str, Any],
                 plans: Mapping[str, _Plan], parse: _ParseExample | None, size: int) -> None:
        self.path = path
        self._content, self._signature_defs, self._plans, self._parse = content, signature_defs, plans, parse
        self.signatures = runnable_signatures(signature_defs)
        self._pool: queue.Queue[_Slot] = queue.Queue()
        for _ in range(size):
            self._pool.put(_Slot(content))

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._signature_defs

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        plan = self._plans[signature_key]  # inputs were checked by the caller (data plane, warmup)
        names = tuple(output_filter) or tuple(plan.outputs)
        slot = self._pool.get()
        try:
            if plan.runner_key:
                runner = slot.runners.get(plan.runner_key) or slot.runners.setdefault(
                    plan.runner_key, slot.interpreter.get_signature_runner(plan.runner_key))
                results = runner(**inputs)
                return {a: results[a] for a in names}
            return self._run_main(slot, plan, inputs, names)
        except (ValueError, RuntimeError) as e:
            # A failed resize or allocation leaves the interpreter half-prepared: replace it.
            slot = _Slot(self._content)
            signature = self.signatures[signature_key]
            sent = ", ".join(f"{a}: {list(v.shape)}" for a, v in sorted(inputs.items()))
            declared = ", ".join(f"{a}: {s.shape_text()}" for a, s in sorted(signature.inputs.items()))
            raise ServingError.invalid_argument(
                f"The TFLite model rejected input shapes {{{sent}}} (signature {signature_key} declares "
                f"{{{declared}}}): {_reason(e)}") from None
        finally:
            self._pool.put(slot)

    def _run_main(self, slot: _Slot, plan: _Plan, inputs: Mapping[str, np.ndarray],
                  names: Sequence[str]) -> dict[str, np.ndarray]:
        feeds = {plan.inputs[a]: np.ascontiguousarray(v) for a, v in inputs.items()}
        lifted: dict[int, np.ndarray] = {}
        if self._parse is not None and self._parse.serialized in feeds:
            serialized = feeds[self._parse.serialized]
            if self._parse.serialized not in slot.shapes:  # only the lifted op read it
                del feeds[self._parse.serialized]
            lifted = self._parse(serialized)
            feeds.update((i, v) for i, v in lifted.items() if i in slot.shapes)
        interpreter, resized = slot.interpreter, False
        for index, value in feeds.items():
            if slot.shapes[index] != value.shape:  # TF Serving's slow path: resize and reallocate
                interpreter.resize_tensor_input(index, value.shape)
                slot.shapes[index], resized = value.shape, True
        if resized:
            interpreter.allocate_tensors()
        for index, value in feeds.items():
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        fetch: Callable[[int], np.ndarray] = lambda i: lifted[i] if i in lifted else interpreter.get_tensor(i)
        return {a: fetch(plan.outputs[a]) for a in names}

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait()


def _reason(e: BaseException) -> str:
    """TFLite's message on one line, without its 'See instructions' links."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(line for line in lines if not line.startswith("See instructions"))
    return re.sub(r"(?<=[^.\s])(?=Node number \d)", ". ", text)[:1000]  # TFLite glues these on


def load_tflite(model_file: str, path: str, pools: int, interpreters_per_pool: int) -> TfLiteServable:
    """Load ``model_file`` with ``pools`` x ``interpreters_per_pool`` interpreters (at least one)."""
    try:
        with open(model_file, "rb") as f:
            data = f.read()
        if not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ServingError.invalid_argument(f"Cannot build FlatBufferModel from {model_file}")
        model = flatbuffer_utils.convert_bytearray_to_object(data)
        signature_defs, plans = _signatures(model, model_file)
        direct = not any(plan.runner_key for plan in plans.values())
        content, parse = _lift_parse_example(data, model) if direct else (data, None)
        size = max(1, pools) * max(1, interpreters_per_pool)
        return TfLiteServable(path, content, signature_defs, plans, parse, size)
    except ServingError:
        raise
    except Exception as e:  # flatbuffer, flexbuffer and interpreter errors: all mean a model we can't serve
        raise ServingError(Code.INTERNAL, f"Failed to load TFLite model at {model_file}: {first_line(e)}") from e
