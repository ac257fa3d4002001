"""What a 224x224x3 float32 Predict costs beyond the model's own run, over gRPC and REST, with
TF Serving's API and with the Open Inference Protocol (V2: raw gRPC contents; REST binary tensors).

    python benchmarks/big_tensor.py [--requests 200]

The model averages each image (y = mean(x, [1, 2, 3])), so nearly all of a request's time is
transport and codecs. Bodies are encoded once, before timing: the gRPC request as its
serialized bytes (tensor_content, as tf.make_tensor_proto builds it) sent through a raw-bytes
stub, the REST request as JSON bytes (`{"instances": [...]}`), so the client's own encoding is
not what is measured; the V2 REST body is Triton's binary extension (a JSON header, then the
image's 602 KB as they are, the output asked for as binary too). The model's run time is measured in-process, through the same Session
runtime the server uses. Loopback, one request at a time, p50 and p99 reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import orjson
import requests
import tensorflow as tf
from _common import (  # benchmarks/ is on sys.path when run as a script
    free_port,
    percentile,
    stop,
    time_calls,
    wait_ready,
)
from tensorflow_serving.apis import predict_pb2

from pyserving.protocols.grpc.open_inference_protos import ModelInferRequest
from pyserving.runtime.loader import RuntimeSettings, session_config
from pyserving.runtime.session import load_session

SHAPE = (1, 224, 224, 3)


class _Mean(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.reduce_mean(x, axis=[1, 2, 3])}


def ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="big-tensor-"))
    module = _Mean()
    tf.saved_model.save(module, str(work / "m" / "1"), signatures={"serving_default": module.serve})
    image = np.random.default_rng(0).random(SHAPE, dtype=np.float32)

    servable = load_session(str(work / "m" / "1"), ["serve"], session_config(RuntimeSettings()))
    model = time_calls(lambda: servable.run("serving_default", {"x": image}), args.requests, warmup=10)
    servable.close()

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(image))
    grpc_body = request.SerializeToString()
    rest_body = orjson.dumps({"instances": image.tolist()})
    v2_grpc = ModelInferRequest(model_name="m")
    v2_grpc.inputs.add(name="x", datatype="FP32", shape=SHAPE)
    v2_grpc.raw_input_contents.append(image.tobytes())
    v2_grpc_body = v2_grpc.SerializeToString()
    header = orjson.dumps({"inputs": [{"name": "x", "shape": SHAPE, "datatype": "FP32",
                                       "parameters": {"binary_data_size": image.nbytes}}],
                           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    v2_rest_body = header + image.tobytes()

    port, rest_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorflow_model_server"), f"--port={port}",
         f"--rest_api_port={rest_port}", "--model_name=m", f"--model_base_path={work / 'm'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{rest_port}/v1/models/m/ready", server)
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]) as ch:
            predict = ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
            grpc_samples = time_calls(lambda: predict(grpc_body, timeout=30), args.requests, warmup=10)
            infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            v2_grpc_samples = time_calls(lambda: infer(v2_grpc_body, timeout=30), args.requests, warmup=10)
        url = f"http://127.0.0.1:{rest_port}/v1/models/m:predict"
        v2_url = f"http://127.0.0.1:{rest_port}/v2/models/m/infer"
        v2_headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        with requests.Session() as http:
            rest_samples = time_calls(lambda: http.post(url, data=rest_body, timeout=30).raise_for_status(),
                                      args.requests, warmup=10)
            v2_rest_samples = time_calls(
                lambda: http.post(v2_url, data=v2_rest_body, headers=v2_headers, timeout=30).raise_for_status(),
                args.requests, warmup=10)
    finally:
        stop(server)
    base = statistics.median(model) * 1000
    print(f"model run (in-process Session call): p50 {base:.2f} ms")
    for name, samples, size in (("gRPC tensor_content", grpc_samples, len(grpc_body)),
                                ("REST JSON", rest_samples, len(rest_body)),
                                ("V2 gRPC raw", v2_grpc_samples, len(v2_grpc_body)),
                                ("V2 REST binary", v2_rest_samples, len(v2_rest_body))):
        print(f"{name:<20} body {size / 1024:.0f} KiB: p50 {ms(samples, 0.5):.2f} ms, p99 {ms(samples, 0.99):.2f} ms"
              f" -> {ms(samples, 0.5) - base:.2f} ms over the model's run (p50)")


if __name__ == "__main__":
    main()
