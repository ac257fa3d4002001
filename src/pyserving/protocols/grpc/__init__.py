"""gRPC on --port: TF Serving's services over grpc.aio (``service``), the profiler (``profiler``),
grpc.health.v1 (``health``) and load shedding of calls queued in grpc's core (``gate``)."""
