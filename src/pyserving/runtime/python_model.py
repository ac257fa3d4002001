"""Python models: a version folder's ``model.py`` around its SavedModel (or TFLite model), or alone.

``model.py`` defines ``class Model`` with ``predict(inputs, signature_name) -> outputs`` (numpy
arrays by name in and out), ``__init__(path, saved_model=None)`` and optionally ``close()`` and
``signatures`` (required without a model file). ``saved_model`` runs the folder's own model
through pyserving's runtime: ``saved_model(signature_name, inputs) -> outputs``. The folder is on
``sys.path`` while ``model.py`` imports, so it can ship helper modules and data files; modules
imported from it are dropped from ``sys.modules`` afterwards, so two versions with a
``helpers.py`` each never share one. Only with ``--enable_python_models``: the loader refuses the
folder before anything in it is imported (docs/security.md).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from ..codecs.dtypes import BY_ENUM, from_numpy_dtype
from ..errors import Code, InvalidInput, ServingError
from .servable import Servable, Signature, TensorSpec

log = logging.getLogger("pyserving.python_model")

MODEL_FILE = "model.py"
PREDICT_METHOD = "tensorflow/serving/predict"
TRACEBACK_INTERVAL_SECONDS = 10.0  # a failing model logs its traceback at most this often


def has_python_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_FILE))


class SavedModelHandle:
    """What ``Model`` gets as ``saved_model``: the folder's own model, run by pyserving's runtime."""

    def __init__(self, servable: Servable) -> None:
        self._servable = servable

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._servable.signatures

    def __call__(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                 output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        return self._servable.run(signature_name, dict(inputs), output_filter)


class PythonServable:
    """A loaded ``model.py``: the Servable interface over ``Model.predict``."""

    runtime = "python"
    runs_inline = False  # model code may take any time: never on the event loop

    def __init__(self, path: str, model: Any, signatures: dict[str, Signature], inner: Servable | None,
                 defs: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self._model = model
        self._signatures = signatures
        self._inner = inner
        # The inner model's SignatureDefs as stored when its signatures are the ones served.
        self._defs = dict(defs) if defs is not None else {k: _signature_def(sig) for k, sig in signatures.items()}
        self._last_traceback = 0.0
        self._log_lock = threading.Lock()

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._defs

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        try:
            outputs = self._model.predict(dict(inputs), signature_key)
        except InvalidInput as e:
            raise ServingError.invalid_argument(str(e)) from None
        except ServingError:
            raise
        except Exception as e:
            self._log_failure(e)
            # The client learns what failed, not where the server keeps the model: the log has both.
            raise ServingError(Code.INTERNAL, f"The Python model's predict failed: {type(e).__name__}: {e} "
                                              "(the server's log has the traceback)") from None
        return self._checked(signature_key, outputs, output_filter)

    def _checked(self, key: str, outputs: Any, output_filter: Sequence[str]) -> dict[str, np.ndarray]:
        """The outputs asked for, each as the signature declares it (INTERNAL naming one that isn't)."""
        if not isinstance(outputs, Mapping):
            raise ServingError(Code.INTERNAL, "The Python model's predict returned "
                                              f"{type(outputs).__name__}, not a dict of outputs")
        declared = self._signatures[key].outputs
        result = {}
        for name in output_filter or declared:
            if name not in outputs:
                raise ServingError(Code.INTERNAL, f"The Python model's output '{name}' of signature "
                                                  f"'{key}' is missing from what predict returned")
            result[name] = _as_declared(np.asarray(outputs[name]), declared[name])
        return result

    def _log_failure(self, error: Exception) -> None:
        with self._log_lock:  # a model failing on every request must not flood the log
            now = time.monotonic()
            if now - self._last_traceback < TRACEBACK_INTERVAL_SECONDS:
                return
            self._last_traceback = now
        log.error("Python model %s raised in predict (tracebacks at most every %.0f s)", self.path,
                  TRACEBACK_INTERVAL_SECONDS, exc_info=error)

    def close(self) -> None:
        close = getattr(self._model, "close", None)
        try:
            if callable(close):
                close()
        finally:
            if self._inner is not None:
                self._inner.close()


def load_python_model(path: str, load_inner: Callable[[str], Servable] | None) -> PythonServable:
    """Import ``model.py``, load the folder's own model (``load_inner``) if there is one, make ``Model``."""
    inner = load_inner(path) if load_inner is not None else None
    try:
        module = _import(path)
        cls = getattr(module, "Model", None)
        if not inspect.isclass(cls):
            raise ServingError.invalid_argument(f"{os.path.join(path, MODEL_FILE)} defines no class Model")
        declared = getattr(cls, "signatures", None)
        if declared is None and inner is None:
            raise ServingError.invalid_argument(
                f"{os.path.join(path, MODEL_FILE)}: Model.signatures is required without a SavedModel")
        signatures = _signatures(declared, path) if declared is not None else dict(inner.signatures)
        handle = SavedModelHandle(inner) if inner is not None else None
        accepts = inspect.signature(cls).parameters
        model = cls(path, saved_model=handle) if "saved_model" in accepts or handle is not None else cls(path)
        defs = inner.signature_defs if declared is None and inner is not None else None
        return PythonServable(path, model, signatures, inner, defs)
    except BaseException:
        if inner is not None:
            inner.close()
        raise


# sys.path and sys.modules are the process's: two versions loading at once in the load threads
# must not see each other's folder first on sys.path (each would import the other's helpers).
_IMPORT_LOCK = threading.Lock()


def _import(path: str) -> Any:
    with _IMPORT_LOCK:
        return _import_alone(path)


def _import_alone(path: str) -> Any:
    file = os.path.join(path, MODEL_FILE)
    name = f"pyserving_model_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.path.insert(0, path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(path)
        folder = os.path.abspath(path) + os.sep
        for added in set(sys.modules) - before:  # the folder's own helpers: this version's alone
            if (getattr(sys.modules[added], "__file__", None) or "").startswith(folder):
                del sys.modules[added]
    return module


def _signatures(declared: Any, path: str) -> dict[str, Signature]:
    where = f"{os.path.join(path, MODEL_FILE)}: Model.signatures"
    if not isinstance(declared, Mapping) or not declared:
        raise ServingError.invalid_argument(f"{where} must map signature names to inputs and outputs")
    result = {}
    for key, spec in declared.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("inputs"), Mapping) \
                or not isinstance(spec.get("outputs"), Mapping):
            raise ServingError.invalid_argument(f"{where}['{key}'] needs 'inputs' and 'outputs' dicts")
        result[key] = Signature(key=key, method_name=PREDICT_METHOD,
                                inputs={a: _tensor(a, t, f"{where}['{key}'] input '{a}'") for a, t in spec["inputs"].items()},
                                outputs={a: _tensor(a, t, f"{where}['{key}'] output '{a}'")
                                         for a, t in spec["outputs"].items()})
    return result


def _tensor(alias: str, declared: Any, where: str) -> TensorSpec:
    try:
        dtype_name, shape = declared
        enum = types_pb2.DT_STRING if dtype_name == "string" else from_numpy_dtype(np.dtype(dtype_name)).enum
        dims = None if shape is None else tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise ServingError.invalid_argument(f"{where}: expected (dtype name, shape), e.g. ('float32', [-1, 3]): "
                                            f"{e}") from None
    return TensorSpec(alias=alias, tensor_name=alias, dtype=enum, shape=dims)


def _as_declared(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == types_pb2.DT_STRING:
        if array.dtype.kind in "SU":  # numpy strings: the object arrays of bytes TF Serving's codecs take
            return np.vectorize(lambda v: v.encode() if isinstance(v, str) else bytes(v), otypes=[object])(array)
        if array.dtype == object:
            return array
    elif array.dtype == BY_ENUM[spec.dtype].numpy:
        return array
    raise ServingError(Code.INTERNAL, f"The Python model's output '{spec.alias}' is {array.dtype}, but the "
                                      f"signature declares {types_pb2.DataType.Name(spec.dtype)[3:].lower()}")


def _signature_def(signature: Signature) -> Any:
    """The SignatureDef metadata answers with, from a declared (or inner) signature."""
    sig = meta_graph_pb2.SignatureDef(method_name=signature.method_name)
    for field, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        for alias, spec in specs.items():
            info = getattr(sig, field)[alias]
            info.name, info.dtype = spec.tensor_name, spec.dtype
            if spec.shape is None:
                info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
            else:
                info.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape)
    return sig


__all__ = ["MODEL_FILE", "PythonServable", "SavedModelHandle", "has_python_model", "load_python_model"]
