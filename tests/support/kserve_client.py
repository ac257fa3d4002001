"""KServe's own Python clients (InferenceRESTClient, InferenceGRPCClient) against a running server.

Run by tests/test_open_inference.py with the python of .tools/kserve-venv (KServe's protobuf pin
can't share the server's venv). Prints one JSON object: what each call answered.
    python kserve_client.py REST_URL GRPC_TARGET
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

X = np.array([[1.0], [2.0], [5.0]], np.float32)


def request(binary: bool, model: str = "hpt", datatype: str = "FP32", array: np.ndarray = X,
            parameters: dict | None = None) -> InferRequest:
    tensor = InferInput(name="x" if model == "hpt" else "images", shape=list(array.shape), datatype=datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], parameters=parameters)


async def main(rest_url: str, grpc_target: str) -> dict:
    found: dict = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    found["rest_live"] = await rest.is_server_live(rest_url)
    found["rest_ready"] = await rest.is_server_ready(rest_url)
    found["rest_model_ready"] = await rest.is_model_ready(rest_url, "hpt")
    found["rest_unknown_model_ready"] = await rest.is_model_ready(rest_url, "nope")
    for binary in (False, True):
        answer = await rest.infer(rest_url, request(binary), model_name="hpt")
        found[f"rest_infer_binary_{binary}"] = answer.outputs[0].as_numpy().tolist()
    images = np.zeros((2, 784), np.float32)
    answer = await rest.infer(rest_url, request(True, "mnist", array=images,
                                                parameters={"signature_name": "predict_images"}), model_name="mnist")
    found["rest_mnist_scores_shape"] = list(answer.outputs[0].as_numpy().shape)
    try:
        await rest.infer(rest_url, request(False, datatype="FP64", array=X.astype(np.float64)), model_name="hpt")
    except Exception as e:  # httpx.HTTPStatusError
        found["rest_wrong_datatype"] = [e.response.status_code, e.response.json()["error"]]
    await rest.close()

    grpc_client = InferenceGRPCClient(grpc_target, retries=2)
    found["grpc_live"] = await grpc_client.is_server_live()
    found["grpc_ready"] = await grpc_client.is_server_ready()
    found["grpc_model_ready"] = await grpc_client.is_model_ready("hpt")
    answer = await grpc_client.infer(request(False))
    found["grpc_infer"] = answer.outputs[0].as_numpy().tolist()
    answer = await grpc_client.infer(request(False, "mnist", array=images,
                                             parameters={"signature_name": "predict_images"}))
    found["grpc_mnist_scores_shape"] = list(answer.outputs[0].as_numpy().shape)
    try:
        await grpc_client.infer(request(False, model="nope"))
    except Exception as e:  # grpc.aio.AioRpcError
        found["grpc_unknown_model"] = e.code().name
    await grpc_client.close()
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
