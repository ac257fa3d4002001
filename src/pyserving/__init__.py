"""pyserving: TensorFlow Serving, rebuilt in Python.

The package reads as the server's diagram, each layer importing only the ones below it
(tests/test_architecture.py keeps it so):

    cli, ray_serve        entry points: tensorflow_model_server, pyserving, Ray Serve
    client, mnist         the Python client; the MNIST tutorial's programs
    server/               wiring and processes: Server, workers, peers, TLS, start-up checks
    protocols/            the APIs: grpc/ and rest/, thin over the request core
    serving/              the request core: data plane, admission, batching, inference verbs
    core/, observability/ model management (sources, manager, reloads); metrics and logs
    config/, runtime/     what to serve (config files); how to run it (TensorFlow, TFLite)
    codecs/, storage/     tensors on the wire; model folders, local or in object storage
    errors, options       the error type and the flags, used everywhere
"""

__version__ = "0.1.0"

from .errors import InvalidInput  # noqa: E402  (for model.py: `from pyserving import InvalidInput`)

__all__ = ["InvalidInput", "__version__"]
