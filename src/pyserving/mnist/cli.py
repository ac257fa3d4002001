"""`pyserving mnist export|client`: the tutorial's two scripts as sub-commands.

TensorFlow is imported only inside the handlers, so registering these commands
costs nothing when the user just asks for --help or runs another command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default (a default of None is described by the help itself)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


def add_mnist_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mnist` with `export` and `client` sub-commands on subparsers."""
    mnist = subparsers.add_parser("mnist", allow_abbrev=False, help="TF Serving MNIST tutorial: export a model, run the client")
    commands = mnist.add_subparsers(dest="mnist_command", metavar="{export,client,demo}")
    commands.required = True
    _add_export(commands)
    _add_client(commands)
    _add_demo(commands)
    return mnist


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser("demo", allow_abbrev=False, formatter_class=_Defaults, help="the whole tutorial: export, serve, query, hot-swap a version")
    _add_data_dir(parser)
    parser.add_argument("--workdir", default=None, help="where models and the server log go (default: a temp dir)")
    parser.add_argument("--num_tests", "--num-tests", dest="num_tests", type=_positive_int, default=1000,
                        help="number of test images sent to each version")
    parser.add_argument("--concurrency", type=_positive_int, default=4, help="maximum requests in flight")
    parser.set_defaults(func=run_demo_command)


def _with_data(command: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    """A sub-command that needs MNIST: exit 2 with the reason when the data can't be read."""
    def run(args: argparse.Namespace) -> int:
        from pyserving.runtime.quiet import claim_log_level, import_tensorflow

        # TensorFlow's C++ start-up lines stay out of the tutorial's output, as the server's.
        import_tensorflow(claim_log_level())
        from pyserving.mnist.data import MnistFormatError, load_mnist

        try:
            data = load_mnist(args.data_dir)
        except (MnistFormatError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return command(args, data)
    return run


@_with_data
def run_demo_command(args: argparse.Namespace, data: Any) -> int:
    from pyserving.mnist.demo import run_demo

    return run_demo(data, args.workdir, args.num_tests, args.concurrency)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", "--data_dir", "--work_dir", dest="data_dir", default=None,
        help="folder with the four MNIST .gz files (default: $MNIST_DIR, else download to the cache)",
    )


def _add_export(commands: Any) -> None:
    parser = commands.add_parser("export", allow_abbrev=False, formatter_class=_Defaults, help="train the softmax model and export a SavedModel version")
    _add_data_dir(parser)
    parser.add_argument("--training_iteration", "--training-iteration", dest="training_iteration",
                        type=_positive_int, default=1000, help="number of training steps")
    parser.add_argument("--model_version", "--model-version", dest="model_version",
                        type=_non_negative_int, default=1, help="version number of the model")
    parser.add_argument("--seed", type=int, default=0, help="seed for batch shuffling")
    parser.add_argument("export_dir", help="model base path; the version is written under it")
    parser.set_defaults(func=run_export)


def _add_client(commands: Any) -> None:
    parser = commands.add_parser("client", allow_abbrev=False, formatter_class=_Defaults, help="send MNIST test images to a server and report the error rate")
    parser.add_argument("--server", default="localhost:8500",
                        help="host:port of the gRPC API (or of the REST API with --rest)")
    parser.add_argument("--num_tests", "--num-tests", dest="num_tests", type=_positive_int, default=100,
                        help="number of test images")
    parser.add_argument("--concurrency", type=_positive_int, default=1, help="maximum requests in flight")
    parser.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    parser.add_argument("--model_name", "--model-name", dest="model_name", default="mnist",
                        help="the model's name on the server (--model_name of tensorflow_model_server)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline in seconds")
    _add_data_dir(parser)
    parser.set_defaults(func=run_client_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


@_with_data
def run_export(args: argparse.Namespace, data: Any) -> int:
    from pyserving.mnist.export import export_mnist

    print("Training model...", flush=True)
    try:
        result = export_mnist(args.export_dir, args.model_version, data,
                              training_iteration=args.training_iteration, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"training accuracy {result.test_accuracy:g}")
    # Printed after the atomic rename: the path is only meaningful once it exists.
    print(f"Exporting trained model to {result.path}")
    print("Done exporting!")
    return 0


@_with_data
def run_client_command(args: argparse.Namespace, data: Any) -> int:
    from pyserving.mnist.client import format_result, run_client

    result = run_client(args.server, data, num_tests=args.num_tests, concurrency=args.concurrency,
                        rest=args.rest, model_name=args.model_name, timeout=args.timeout)
    print(format_result(result))
    return 1 if result.num_failures else 0
