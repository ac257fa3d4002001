"""The APIs on the two ports: thin layers that decode, call ``serving.dataplane`` and encode.

``grpc/`` holds TF Serving's PredictionService and ModelService, the profiler service, the
standard health service and gRPC's load shedding; ``rest/`` holds TF Serving's REST API, its
connection gate and read timeouts, the status page and the OpenAPI document.
``control_plane`` is the operator's lock on reloads, the profiler and load/unload, shared by both.
A protocol may import ``serving`` and everything below it; protocols never import each other
(beyond ``control_plane``), the server or the CLI.
"""
