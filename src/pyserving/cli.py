"""Command line: `pyserving serve|mnist ...` and `tensorflow_model_server` (TF Serving's flags)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import signal
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from . import __version__
from .options import FLAG_GROUPS, ServerOptions

if TYPE_CHECKING:
    from pyserving.config.model_config import ModelConfig
    from pyserving.server.supervisor import WorkerSlot

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


SERVER_USAGE = "%(prog)s [--flag=value ...]  (the flags below, by group)"


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerOptions field, spelled as TF Serving spells it, shown in FLAG_GROUPS."""
    fields = {f.name: f for f in dataclasses.fields(ServerOptions)}
    for title, names in FLAG_GROUPS:
        group = parser.add_argument_group(title)
        for name in names:
            _add_flag(group, fields.pop(name))
    for f in fields.values():  # a flag no group lists yet still parses (test_cli.py tells)
        _add_flag(parser, f)


def _add_flag(group: argparse._ActionsContainer, f: dataclasses.Field) -> None:
    kind = type(f.default)
    help_text = f.metadata["help"] + ("" if f.metadata["supported"] else " [accepted; no effect yet]")
    help_text += f" (default: {_shown(f.default)})"
    if kind is bool:
        group.add_argument(f"--{f.name}", type=_parse_bool, nargs="?", const=True,
                           default=f.default, metavar="true|false", help=help_text)
    else:
        group.add_argument(f"--{f.name}", type=kind, default=f.default, help=help_text)


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default) if default == "" else str(default)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one short line (with a "did you mean" for a misspelt flag)
    instead of the whole usage."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}{_suggestion(self, message)}\n"
                     f"Run '{self.prog} --help' to see every flag.\n")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return ""
    known = sorted({o for p in _all_parsers(parser) for o in p._option_string_actions if o.startswith("--")})
    for word in message[len(prefix):].split():
        match = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75)
        if match:
            return f" (did you mean {match[0]}?)"
    return ""


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its sub-commands' parsers, at every depth (pyserving mnist client ...)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerOptions)})


def _setup_logging(options: ServerOptions) -> bool:
    """Python logging as the flags ask; whether TensorFlow's C++ start-up lines stay quiet
    (yes, unless the user set TF_CPP_MIN_LOG_LEVEL to see them)."""
    from .observability import logs
    from .runtime.quiet import claim_log_level

    quiet_tensorflow = claim_log_level()  # before check_options, which may import TensorFlow
    logs.configure(options.log_format)
    return quiet_tensorflow


def serve(options: ServerOptions) -> int:
    from pyserving.config.model_config import ConfigError, models_from_options
    from pyserving.server.checks import check_options, check_preload

    if options.version:
        print(f"TensorFlow ModelServer: pyserving-{__version__}")
        return 0
    quiet_tensorflow = _setup_logging(options)
    from .runtime.quiet import claim_allocator

    # Before TensorFlow's import too; logged once the flags are known good (a failed start is one line).
    onednn_off = claim_allocator(options.max_loaded_models > 0 or options.max_loaded_model_memory_mb > 0)
    log = logging.getLogger("pyserving")
    try:
        check_options(options)
        models = models_from_options(options)
        check_preload(options, models)
    except ConfigError as e:
        print(f"tensorflow_model_server: {e}", file=sys.stderr)
        return 1
    if onednn_off:
        log.info("oneDNN kernels off (TF_ENABLE_ONEDNN_OPTS=0) under a budget of loaded models, so an unloaded "
                 "model's memory goes back to the system; set TF_ENABLE_ONEDNN_OPTS=1 to keep them")
    for name in options.unsupported_flags_set():
        log.warning("--%s is accepted for compatibility but has no effect in pyserving yet", name)
    from pyserving.server.supervisor import worker_count

    from .runtime.quiet import import_tensorflow

    count = worker_count(options.num_workers)
    try:
        # Seconds of imports before the server's (or the supervisor's) signal handlers exist.
        import_tensorflow(quiet_tensorflow, probe_devices=count == 1)
        return _run_server(options, models, None) if count == 1 else _supervise(options, models, count)
    except KeyboardInterrupt:  # SIGINT that early (SIGTERM's default action ends the process)
        return 128 + signal.SIGINT


def _supervise(options: ServerOptions, models: list[ModelConfig], count: int) -> int:
    import gc
    import importlib

    from pyserving.server.supervisor import Supervisor

    # TensorFlow's import (~550 MiB) is done once and shared copy-on-write by the forked workers;
    # nothing of TensorFlow or gRPC has started yet (no session, channel or server), so the fork is safe.
    importlib.import_module(".server", __package__)
    gc.freeze()  # keeps the collector from touching, and so copying, the shared objects
    return Supervisor(count, lambda slot: _run_server(options, models, slot)).run()


def _run_server(options: ServerOptions, models: list[ModelConfig], slot: WorkerSlot | None) -> int:
    from pyserving.server.process import run

    return run(options, models, slot)


def model_server_main(argv: Sequence[str] | None = None) -> int:
    # No abbreviations: TF Serving takes whole flag names only, and a prefix must not be misread.
    parser = _Parser(
        prog="tensorflow_model_server", allow_abbrev=False, usage=SERVER_USAGE,
        description="pyserving: a drop-in tensorflow_model_server (TF Serving's flags; "
                    "help starting 'pyserving:' marks pyserving's own).")
    add_server_flags(parser)
    return serve(options_from_args(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="pyserving", allow_abbrev=False,
        description="pyserving: TensorFlow Serving, rebuilt in Python. "
                    "`pyserving serve` is tensorflow_model_server; `pyserving mnist` is the tutorial; "
                    "`pyserving warmup-from-log` makes a warmup file from request logs.")
    parser.add_argument("--version", action="version", version=f"pyserving {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the model server (TF Serving's flags)",
                                       allow_abbrev=False, usage=SERVER_USAGE)
    add_server_flags(serve_parser)
    serve_parser.set_defaults(func=lambda a: serve(options_from_args(a)))
    from .mnist.cli import add_mnist_commands

    add_mnist_commands(commands)
    from pyserving.observability.warmup_from_log import add_command as add_warmup_from_log

    add_warmup_from_log(commands)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
