"""Load a SavedModel version folder and run its signatures.

TensorFlow's own loader (``tf.saved_model.load``) runs every export style we
serve: TF1 ``SavedModelBuilder`` graphs (with their main op, e.g. table
initialisers), TF2 ``tf.function`` exports and Keras models. Signature
metadata is read from the MetaGraphDef itself, so what clients see is exactly
what was exported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import Code, ServingError
from ..codecs.dtypes import BY_ENUM, dtype_name

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


def _tensor_spec(alias: str, info) -> TensorSpec:
    shape = None
    if info.HasField("tensor_shape") and not info.tensor_shape.unknown_rank:
        shape = tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, tensor_name=info.name, dtype=info.dtype, shape=shape)


def _signature(key: str, sig_def) -> Signature:
    return Signature(
        key=key,
        method_name=sig_def.method_name,
        inputs={a: _tensor_spec(a, t) for a, t in sig_def.inputs.items()},
        outputs={a: _tensor_spec(a, t) for a, t in sig_def.outputs.items()},
    )


def read_meta_graph(path: str, tags: Sequence[str]):
    """The MetaGraphDef whose tag set equals ``tags``, as TF Serving picks it."""
    from tensorflow.core.protobuf import saved_model_pb2
    from google.protobuf import text_format

    pb, pbtxt = os.path.join(path, "saved_model.pb"), os.path.join(path, "saved_model.pbtxt")
    saved_model = saved_model_pb2.SavedModel()
    try:
        if os.path.exists(pb):
            with open(pb, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif os.path.exists(pbtxt):
            with open(pbtxt, encoding="utf-8") as f:
                text_format.Parse(f.read(), saved_model)
        else:
            raise ServingError(Code.NOT_FOUND,
                               f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}")
    except ServingError:
        raise
    except Exception as e:  # DecodeError, ParseError, OSError: all mean a corrupt export
        raise ServingError(Code.DATA_LOSS, f"Cannot parse the SavedModel at {path}: {e}") from e
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(
        Code.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }} "
        f"in {path}; the SavedModel has tag sets {found}. "
        "To inspect them, use the SavedModel CLI: `saved_model_cli show --dir PATH`")


class SavedModelServable:
    """One loaded version: its signatures and the functions that run them."""

    def __init__(self, path: str, meta_graph, loaded) -> None:
        self.path = path
        self.meta_graph = meta_graph
        self._loaded = loaded
        self._functions = dict(loaded.signatures)
        self.signatures: dict[str, Signature] = {
            k: _signature(k, s) for k, s in meta_graph.signature_def.items()
            if k != INIT_OP_SIGNATURE and k in self._functions
        }

    @property
    def signature_defs(self):
        """The SignatureDefs exactly as stored (init-op entry included, as TF Serving shows it)."""
        return self.meta_graph.signature_def

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        import tensorflow as tf

        function = self._functions[signature_key]
        try:
            # Explicit conversion is cheaper than the signature's own argument conversion.
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise ServingError(Code(e.error_code), _op_error_message(e)) from None
        except (TypeError, ValueError) as e:
            raise ServingError.invalid_argument(str(e)) from None
        names = output_filter or list(result)
        return {n: result[n].numpy() for n in names}

    def close(self) -> None:
        self._functions.clear()
        self._loaded = None


_NOISE = ("Graph execution error", "Detected at node", "Stack trace", "Traceback", "Function call stack",
          "File \"")


def _op_error_message(e) -> str:
    """The reason out of a TF error, without its graph trace and node dumps."""
    text = (e.message or "").strip()
    for paragraph in text.split("\n\n"):
        lines = [line for line in paragraph.strip().splitlines()
                 if line.strip() and not line.strip().startswith("[[")]
        if lines and not lines[0].startswith(_NOISE):
            return " ".join(line.strip() for line in lines)[:2000]
    return text[:2000] or type(e).__name__


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Must run before TensorFlow executes anything."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def load_saved_model(path: str, tags: Sequence[str] = ("serve",)) -> SavedModelServable:
    """Load a version folder; raises ServingError with the reason on failure."""
    meta_graph = read_meta_graph(path, tags)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path, tags=list(tags))
    except Exception as e:  # TF raises many types for broken exports; all are load failures
        raise ServingError(Code.INTERNAL, f"Failed to load SavedModel at {path}: {_first_line(e)}") from e
    return SavedModelServable(path, meta_graph, loaded)


def _first_line(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().split("\n\n")[0]


__all__ = ["Signature", "TensorSpec", "SavedModelServable", "load_saved_model",
           "configure_threads", "read_meta_graph", "BY_ENUM"]
