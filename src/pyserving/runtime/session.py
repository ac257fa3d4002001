"""SavedModels in a Session, as TF Serving's SavedModelBundle runs them.

Each version gets its own graph and session, loaded with the TF1 loader's
semantics (tag set, assets, main op / legacy init op, variables restored).
Requests feed tensors by name and fetch by name through Session callables
made once per (signature, fed aliases, fetched aliases), so the graph, not the
signature's declared shapes, decides what it accepts: TF Serving's README
quickstart feeds a [3]-shaped ``x`` to half_plus_two's [-1,1] placeholder.
A callable costs ~16 µs a call where a ``tf.function`` signature costs ~190; ~70 µs of wall time
(90 of CPU) on a small graph are the hand-off to the Session's inter-op threads and back, which
``run_in_caller_thread`` saves for the calls the data plane runs on its event loop (serving/inline.py:
measured cheap, so never a graph whose branches need those threads to finish in time).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from ..errors import Code, ServingError
from .servable import first_line, op_error_message, run_error, runnable_signatures

log = logging.getLogger("pyserving.runtime")
MAX_CALLABLES = 64  # per version; the oldest is released first
_Key = tuple[str, tuple[str, ...], tuple[str, ...], bool]  # signature, feeds, fetches, caller thread


class SessionServable:
    """One version in its own graph and Session."""

    runtime = "session"

    def __init__(self, path: str, signature_defs: Mapping[str, Any], session: tf.compat.v1.Session,
                 meta_graph: Any = None) -> None:
        self.path = path
        self._signature_defs = signature_defs
        self._meta_graph = meta_graph  # kept only with --remove_unused_fields_from_bundle_metagraph=false
        self._session: tf.compat.v1.Session | None = session
        self.signatures = runnable_signatures(signature_defs)
        self._callables: dict[_Key, Callable[..., list]] = {}
        self._lock = threading.Lock()

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._signature_defs

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = (), caller_thread: bool = False) -> dict[str, np.ndarray]:
        # Sorted, so the order a client lists aliases in never makes another callable.
        feeds = tuple(sorted(inputs))
        fetches = tuple(sorted(output_filter)) if output_filter else tuple(self.signatures[signature_key].outputs)
        key = (signature_key, feeds, fetches, caller_thread)
        run = self._callables.get(key) or self._make_callable(key)
        try:
            values = run(*(inputs[alias] for alias in feeds))
        except (tf.errors.OpError, UnicodeDecodeError) as e:
            raise run_error(e) from None
        # A Session answers a scalar string tensor as bare bytes: every servable answers arrays.
        return {alias: np.array(v, dtype=object) if isinstance(v, bytes) else v for alias, v in zip(fetches, values)}

    def run_in_caller_thread(self, signature_key: str, inputs: Mapping[str, np.ndarray],
                             output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """run(), its graph executed on this thread (RunOptions.inter_op_thread_pool = -1)."""
        return self.run(signature_key, inputs, output_filter, caller_thread=True)

    def _make_callable(self, key: _Key) -> Callable[..., list]:
        signature_key, feeds, fetches, caller_thread = key
        signature = self.signatures[signature_key]
        with self._lock:
            if key not in self._callables:
                if self._session is None:
                    raise ServingError.unavailable("This model version is unloading")
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[a].tensor_name for a in feeds],
                    fetch=[signature.outputs[a].tensor_name for a in fetches],
                    run_options=config_pb2.RunOptions(inter_op_thread_pool=-1 if caller_thread else 0))
                if len(self._callables) >= MAX_CALLABLES:  # output_filter subsets are the client's to vary
                    self._callables.pop(next(iter(self._callables)))
                try:
                    self._callables[key] = self._session._make_callable_from_options(options)
                except tf.errors.OpError as e:  # a signature naming a tensor the graph lacks
                    raise ServingError(Code(e.error_code), op_error_message(e.message)) from None
            return self._callables[key]

    def close(self) -> None:
        with self._lock:
            self._callables.clear()
            session, self._session = self._session, None
        if session is not None:
            session.close()


def load_session(path: str, tags: Sequence[str], config: tf.compat.v1.ConfigProto,
                 keep_meta_graph: bool = False) -> SessionServable:
    """Load a version into a new graph and session; raises ServingError with the reason.

    A Session whose resource variables the loader could not restore (Keras 3 models saved
    with ``tf.saved_model.save`` are one such export) raises ``NotRunnableInSession``.
    """
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), path)
            _check_variables_restored(session, graph, meta_graph.signature_def)
        _warn_missing_devices(path, graph)
    except NotRunnableInSession:
        session.close()
        raise
    except Exception as e:  # TF raises many types for broken exports; all are load failures
        session.close()
        raise ServingError(Code.INTERNAL, f"Failed to load SavedModel at {path}: {first_line(e)}") from e
    signature_defs = meta_graph.signature_def
    return SessionServable(path, signature_defs, session, meta_graph if keep_meta_graph else None)


class NotRunnableInSession(Exception):
    """The export loads into a Session but cannot run there."""


def _check_variables_restored(session: tf.compat.v1.Session, graph: tf.Graph,
                              signature_defs: Mapping[str, Any]) -> None:
    """Every variable a signature reads holds a value. Keras 3's ``model.export`` graphs also hold
    unused, never-restored twins of their variables; only the ones signatures reach count."""
    handles = _variables_reached(graph, signature_defs)
    if not handles:
        return
    checks = [tf.raw_ops.VarIsInitializedOp(resource=h) for h in handles]
    initialized = session.run(checks)
    missing = [h.op.name for h, ok in zip(handles, initialized) if not ok]
    if missing:
        raise NotRunnableInSession(
            f"{len(missing)} variable(s) were not restored by the Session loader "
            f"(e.g. {', '.join(missing[:3])})")


def _variables_reached(graph: tf.Graph, signature_defs: Mapping[str, Any]) -> list:
    """The resource variables the signatures' outputs depend on (a walk back through the graph)."""
    stack = []
    for key, sig in signature_defs.items():
        for info in sig.outputs.values():
            try:
                stack.append(graph.get_tensor_by_name(info.name).op)
            except (KeyError, ValueError):  # a bad name fails on first use, with TF's reason
                continue
    seen: set[str] = set()
    handles = []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type == "VarHandleOp":
            handles.append(op.outputs[0])
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return handles


def _warn_missing_devices(path: str, graph: tf.Graph) -> None:
    """Say so when ops pinned to a GPU run on the CPU (soft placement), once per load."""
    pinned = sorted({op.device for op in graph.get_operations() if ":GPU:" in op.device.upper()})
    if pinned and not tf.config.list_physical_devices("GPU"):
        log.warning("%s places ops on %s; this machine has no GPU, so they run on the CPU",
                    path, ", ".join(pinned))
