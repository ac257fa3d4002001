"""The one request core that gRPC and REST both call.

It resolves a model spec to a loaded version, finds the signature, validates
the decoded inputs against it and runs it in a worker thread. Protocol layers
only decode their wire format into numpy and encode the result back, so the
two protocols cannot disagree about models, validation or errors.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, TypeVar

import numpy as np
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, inference_pb2, regression_pb2

from pyserving.codecs import limits
from pyserving.core.manager import ModelManager
from pyserving.core.states import VersionStatus, model_state
from pyserving.errors import ServingError
from pyserving.observability.access_log import access_line
from pyserving.observability.monitoring import UNKNOWN_SIGNATURE, Metrics
from pyserving.observability.request_log import RequestLogger, examples_log, multi_inference_log, predict_log
from pyserving.observability.statistics import InferenceStatistics, Phases
from pyserving.observability.tracing import CURRENT, RequestSpan, Tracing
from pyserving.runtime.servable import (
    DEFAULT_SIGNATURE,
    Servable,
    Signature,
    find_signature,
    validate_inputs,
    validate_output_filter,
)

from . import breakdown, inference
from .admission import Admission, overloaded
from .inline import BAN_SECONDS, InlinePolicy, preemptions
from .responses import metadata_response

T = TypeVar("T")
LocalStatus = Callable[[str, "int | None", "str | None"], list[VersionStatus]]  # model, version, label


class Peers(Protocol):
    """The other worker processes of --num_workers (server.peers.Peers), as the data plane asks them."""

    async def status(self, model: str, version: int | None, label: str | None,
                     local: LocalStatus) -> list[VersionStatus]: ...


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True)
class PredictResult:
    model_name: str
    version: int
    signature_name: str
    outputs: Mapping[str, np.ndarray]


Decoder = Callable[[Signature], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Caller:
    """What the data plane needs to know of a request's caller: the protocol (a metric label),
    the seconds the request has left, and whether it is small enough to run on the event loop."""

    entrypoint: str  # "GRPC" or "REST"
    deadline: float | None = None
    small: bool = False
    peer: str = ""  # the client's address, for the access log (set only when it is on)
    client_deadline: bool = False  # ``deadline`` is the client's own (gRPC's), not the server's timeout
    span: RequestSpan | None = None  # the request's trace, when tracing is on and sampled it


@dataclass(frozen=True)
class InferenceTask:
    """One task of a MultiInference call: a signature and the method it must have."""

    signature_name: str
    method_name: str


# The metric label for requests naming no configured model: a client's string becomes a label
# only once it names a model, so made-up names can't grow the metrics without bound.
UNKNOWN_MODEL_LABEL = "(unknown)"


class DataPlane:
    def __init__(self, manager: ModelManager, executor: Executor,
                 strict_method_names: bool = False, metrics: Metrics | None = None,
                 admission: Admission | None = None, inline: InlinePolicy | None = None,
                 peers: Peers | None = None, access_log: bool = False,
                 request_logger: RequestLogger | None = None, tracing: Tracing | None = None) -> None:
        self._manager = manager
        self.tracing = tracing  # None: tracing is off (tracing.py)
        self._request_log = request_logger or RequestLogger()  # a model's logging_config
        self._access_log = access_log
        self._peers = peers
        self._executor = executor
        self._strict = strict_method_names
        self._metrics = metrics or Metrics()
        self._admission = admission or Admission(limit=0)
        self._inline = inline or InlinePolicy(max_seconds=0)
        self.statistics = InferenceStatistics()  # the Open Inference Protocol's statistics extension
        self._phases = threading.local()  # the running request's Phases, for _run_model

    @property
    def access_log(self) -> bool:
        """--access_log: protocol layers then fill Caller.peer and report what they refuse."""
        return self._access_log

    def log_refused(self, protocol: str, api: str, model: str, error: ServingError, seconds: float,
                    peer: str, http: int | None = None) -> None:
        """The access line of a request a protocol layer refused before the data plane saw it (a
        body that doesn't parse, a message that isn't the proto); once per request."""
        if self._access_log and not getattr(error, "accounted", False):
            access_line(protocol, api, self.model_label(model), None, error.code.name, seconds, peer, error.message, http)

    def model_label(self, name: str) -> str:
        """A requested model's name as metrics, logs and traces carry it: made-up names are one label."""
        return name if self._manager.has_model(name) else UNKNOWN_MODEL_LABEL

    def _version_of(self, spec: ModelSpec) -> int | None:
        if spec.label:
            return self._manager.resolve_label(spec.name, spec.label)
        return spec.version

    async def _in_worker(self, api: str, caller: Caller, spec: ModelSpec,
                         work: Callable[[int, Servable], T]) -> T:
        """Run ``work(version, servable)`` in a worker thread (inline when cheap: inline.py), the
        version held loaded meanwhile."""
        start, status, served, reason = time.perf_counter(), "OK", None, ""
        phases = Phases(traced=caller.span is not None)
        signature = UNKNOWN_SIGNATURE  # a metric label: only a signature the version has
        label = self.model_label(spec.name)
        in_flight = self._metrics.requests_in_flight(label)
        in_flight[0] += 1
        try:
            if not spec.name:
                raise ServingError.invalid_argument("Missing ModelSpec: the request names no model")
            token = self._admission.admit(caller.deadline, caller.client_deadline)
            try:
                resident = time.perf_counter()
                await self._manager.ensure_resident(spec.name, caller.deadline)  # --max_loaded_models
                if phases.traced:
                    phases.resident = time.perf_counter() - resident
                with self._manager.handle(spec.name, self._version_of(spec)) as (version, servable):
                    served = version
                    if api != "multi_inference" and (spec.signature_name or DEFAULT_SIGNATURE) in servable.signatures:
                        signature = spec.signature_name or DEFAULT_SIGNATURE
                    # Only a BatchingServable queues: a full queue refuses here, on the event loop,
                    # before the request takes a thread; its calls wait, so they never run inline.
                    accepting = getattr(servable, "accepting", None)
                    if accepting is not None and not accepting():
                        raise overloaded("The batch scheduling queue to which this task was submitted is full")
                    key = (spec.name, version, api, spec.signature_name)
                    # A Python model's code may take any time: never on the event loop.
                    if accepting is None and getattr(servable, "runs_inline", True) and \
                            self._inline.inline(key, caller.small):
                        result = self._timed(key, work, version, servable, time.perf_counter, True, start, phases)
                    else:
                        result = await asyncio.get_running_loop().run_in_executor(
                            self._executor, self._timed, key, work, version, servable, time.thread_time, False,
                            start, phases, caller.span)
            finally:
                self._admission.leave(token)
            self._metrics.record_answer(spec.name, version, api)
            return result
        except ServingError as e:
            status, reason = e.code.name, e.message
            e.accounted = True  # type: ignore[attr-defined]  # in the access log already
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:  # a bug of ours, answered INTERNAL by the protocol layer: never counted OK
            status = "INTERNAL"
            raise
        finally:
            in_flight[0] -= 1
            seconds = time.perf_counter() - start
            self._metrics.record_request(label, api, caller.entrypoint, status, seconds, signature)
            if served is not None:
                self.statistics.record(spec.name, served, status == "OK", seconds, phases)
            if caller.span is not None:
                breakdown.record(caller.span, api, label, served, signature, status, reason, start, phases)
            if self._access_log:
                access_line(caller.entrypoint, api, label, served, status, seconds, caller.peer, reason, span=caller.span)

    def _timed(self, key: tuple, work: Callable[[int, Servable], T], version: int, servable: Servable,
               clock: Callable[[], float], inline: bool, taken: float, phases: Phases,
               span: RequestSpan | None = None) -> T:
        began, start = time.perf_counter(), clock()
        switches = preemptions() if inline else 0
        phases.queue, phases.began, phases.inline = began - taken, began, inline
        self._phases.current = phases
        trace = CURRENT.set(span) if span is not None else None  # this thread's log lines name the trace
        try:
            result = work(version, servable)
        finally:
            self._phases.current = None
            if trace is not None:
                CURRENT.reset(trace)
        seconds = clock() - start
        self._inline.record(key, seconds, inline, inline and seconds > BAN_SECONDS and preemptions() != switches)
        if phases.ran:  # the model's run splits the rest into decoding before and encoding after
            phases.compute_output = time.perf_counter() - began - phases.compute_input - phases.compute_infer
        return result

    def _run_model(self, api: str, model: str, servable: Servable, signature_name: str,
                   inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        phases = getattr(self._phases, "current", None)
        try:
            if phases is not None and phases.inline and hasattr(servable, "run_in_caller_thread"):
                return servable.run_in_caller_thread(signature_name, inputs, output_filter)
            return servable.run(signature_name, inputs, output_filter)
        finally:
            seconds = time.perf_counter() - start
            self._metrics.record_runtime(model, api, seconds)
            if phases is not None and not phases.ran:  # the first run: MultiInference runs several
                phases.ran, phases.compute_infer = True, seconds
                phases.compute_input = start - phases.began
                last_batch = getattr(servable, "last_batch", None) if phases.traced else None
                if last_batch is not None:
                    phases.batch_rows, phases.batch_wait = last_batch()

    async def predict(self, spec: ModelSpec, decode: Decoder, output_filter: Sequence[str],
                      encode: Callable[[PredictResult], T], caller: Caller, api: str = "predict") -> T:
        """Decode, validate, run and encode in one worker-thread hop. ``api``: the name metrics and
        the access log give the call ("infer" for the Open Inference Protocol's)."""
        def work(version: int, servable: Servable) -> T:
            signature_name = spec.signature_name or DEFAULT_SIGNATURE
            signature = find_signature(servable, signature_name)
            if self._strict:
                inference.check_method(signature, inference.PREDICT_METHOD, strict=True)
            inputs = decode(signature)
            limits.check_inputs(inputs)  # before anything hands them to TensorFlow
            validate_inputs(signature, inputs)
            validate_output_filter(signature, output_filter)
            fetch = tuple(output_filter)
            outputs = self._run_model(api, spec.name, servable, signature_name, inputs, fetch)
            # logging_config: sampled here, built and written in the request logger's thread.
            self._request_log.maybe_log(spec.name, predict_log, spec, version, signature_name, inputs,
                                        fetch, outputs)
            return encode(PredictResult(spec.name, version, signature_name, outputs))
        return await self._in_worker(api, caller, spec, work)

    async def classify(self, spec: ModelSpec, examples: Callable[[], list[bytes]],
                       caller: Caller) -> classification_pb2.ClassificationResponse:
        return await self._examples_call(spec, examples, caller, "classify",
                                         classification_pb2.ClassificationResponse)

    async def regress(self, spec: ModelSpec, examples: Callable[[], list[bytes]],
                      caller: Caller) -> regression_pb2.RegressionResponse:
        return await self._examples_call(spec, examples, caller, "regress",
                                         regression_pb2.RegressionResponse)

    async def _examples_call(self, spec: ModelSpec, examples: Callable[[], list[bytes]],
                             caller: Caller, api: str, response_type):
        """Classify or Regress: one task on one signature, answered in ``response_type``."""
        method = inference.CLASSIFY_METHOD if api == "classify" else inference.REGRESS_METHOD

        def work(version: int, servable: Servable):
            response = response_type()
            name = spec.signature_name or DEFAULT_SIGNATURE
            fill_model_spec(response.model_spec, spec.name, version, name)
            task = InferenceTask(name, method)
            serialized = examples()
            response.result.CopyFrom(self._run_task(api, spec.name, servable, task, serialized))
            self._request_log.maybe_log(spec.name, examples_log, api, spec, serialized, response)
            return response
        return await self._in_worker(api, caller, spec, work)

    async def multi_inference(self, spec: ModelSpec, tasks: Sequence[InferenceTask],
                              examples: Callable[[], list[bytes]],
                              caller: Caller) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress tasks on one input, all on the same model version."""
        _check_tasks(tasks)

        def work(version: int, servable: Servable):
            serialized = examples()
            response = inference_pb2.MultiInferenceResponse()
            for task in tasks:
                result = response.results.add()
                fill_model_spec(result.model_spec, spec.name, version, task.signature_name)
                outcome = self._run_task("multi_inference", spec.name, servable, task, serialized)
                target = (result.classification_result if task.method_name == inference.CLASSIFY_METHOD
                          else result.regression_result)
                target.CopyFrom(outcome)
            self._request_log.maybe_log(spec.name, multi_inference_log, spec, tasks, serialized, response)
            return response
        return await self._in_worker("multi_inference", caller, spec, work)

    def _run_task(self, api: str, model: str, servable: Servable, task: InferenceTask,
                  serialized: list[bytes]):
        signature = find_signature(servable, task.signature_name or DEFAULT_SIGNATURE)
        inference.check_method(signature, task.method_name, self._strict)
        alias = inference.examples_input(signature)
        classify = task.method_name == inference.CLASSIFY_METHOD
        names = (inference.classification_outputs if classify else inference.regression_outputs)(signature)
        batch = np.empty(len(serialized), dtype=object)
        batch[:] = serialized
        self._metrics.record_examples(model, len(serialized))
        outputs = self._run_model(api, model, servable, signature.key, {alias: batch}, names)
        if classify:
            return inference.classification_result(outputs, len(serialized))
        return inference.regression_result(outputs, len(serialized))

    async def status(self, spec: ModelSpec) -> list[VersionStatus]:
        """Model status of the whole server: with --num_workers, merged over every worker."""
        if self._peers is None:
            return self.local_status(spec.name, spec.version, spec.label)
        return await self._peers.status(spec.name, spec.version, spec.label, self.local_status)

    async def listed_status(self, name: str) -> list[VersionStatus]:
        """A configured model's versions for a listing (GET /v1/models, the status page): [] while
        none has been found yet, where status() answers NOT_FOUND."""
        try:
            return await self.status(ModelSpec(name))
        except ServingError:
            return []

    def model_state(self, name: str, statuses: list[VersionStatus]) -> str:
        """The model as a whole (core/states.py), from its versions as listed_status gave them."""
        return model_state(statuses, self._manager.not_loaded(name))

    def local_status(self, name: str, version: int | None = None, label: str | None = None
                     ) -> list[VersionStatus]:
        return self._manager.status(name, self._version_of(ModelSpec(name, version, label)))

    def readiness(self) -> dict[str, bool]:
        """Each configured model: does it have an AVAILABLE version?"""
        return self._manager.readiness()

    def version_labels(self, name: str) -> dict[str, int]:
        return self._manager.labels(name)

    def resolve(self, spec: ModelSpec) -> int:
        """The version a request with this spec would be served by (ServingError if none)."""
        with self._manager.handle(spec.name, self._version_of(spec)) as (version, _):
            return version

    async def ensure_loaded(self, spec: ModelSpec, deadline: float | None = None) -> None:
        """Under a budget of loaded models, a metadata request loads its model as an inference does."""
        await self._manager.ensure_resident(spec.name, deadline)

    def signature(self, spec: ModelSpec) -> tuple[int, Signature | None, str]:
        """The version a spec resolves to, its named (or default) signature if it has one, and
        the kind of runtime serving it."""
        with self._manager.handle(spec.name, self._version_of(spec)) as (version, servable):
            return version, servable.signatures.get(spec.signature_name or DEFAULT_SIGNATURE), servable.runtime

    def max_batch_size(self, spec: ModelSpec) -> int:
        """The rows a batched version takes at most; 0 when its calls are not batched."""
        with self._manager.handle(spec.name, self._version_of(spec)) as (_, servable):
            return getattr(servable, "max_batch_size", 0)

    def metadata(self, spec: ModelSpec, fields: Sequence[str]
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata: the SignatureDefs exactly as stored in the served version."""
        with self._manager.handle(spec.name, self._version_of(spec)) as (version, servable):
            return metadata_response(spec.name, version, servable.signature_defs, fields)


def _check_tasks(tasks: Sequence[InferenceTask]) -> None:
    if not tasks:
        raise ServingError.invalid_argument("MultiInferenceRequest must contain at least one task")
    seen: set[str] = set()
    for task in tasks:
        if task.method_name not in (inference.CLASSIFY_METHOD, inference.REGRESS_METHOD):
            raise ServingError.invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        name = task.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise ServingError.invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)


def fill_model_spec(target, name: str, version: int, signature_name: str) -> None:
    """Echo the resolved model spec into a response's model_spec."""
    target.name = name
    target.version.value = version
    target.signature_name = signature_name
