#!/bin/bash
# The image's entry point, as tensorflow/serving's own tf_serving_entrypoint.sh: TF Serving's
# default ports and the model named by MODEL_NAME under MODEL_BASE_PATH; any arguments given to
# `docker run IMAGE ...` (or a pod's `args`) are appended, and a repeated flag takes the last value.
# `exec` makes the server PID 1's process, so SIGTERM reaches it and it drains before exiting.
set -e
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
