"""Who may change the server: the control plane's lock (docs/security.md).

The data plane (inference, metadata, status, metrics) is open to every client that reaches a port,
as in TF Serving. The control plane is every call that changes what the server does or makes it
write files: HandleReloadConfigRequest and the profiler today, every management API to come. The
operator locks it with ``--admin_token_file`` (every such call then needs ``authorization: Bearer
<token>``, as gRPC metadata or an HTTP header) and can turn config reloads over RPC off entirely
with ``--enable_config_reload_rpc=false``. The REST port has no control plane in TF Serving, so its
V2 repository loads and unloads are refused unless the operator set the token (and the caller gives
it) or ``--rest_api_enable_model_control``. The token is compared in constant time, read once at
start, and never logged.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Iterable

from pyserving.errors import Code, ServingError

BEARER = "bearer "
MAX_TOKEN_BYTES = 4096


class TokenFileError(ValueError):
    """--admin_token_file can't be used: unreadable, empty, or not one line of text."""


def read_token(path: str) -> str:
    """The token: the file's text without surrounding white space (a trailing newline is usual)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise TokenFileError(f"--admin_token_file={path}: cannot read it: {e.strerror or e}") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenFileError(f"--admin_token_file={path}: a token is at most {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"--admin_token_file={path}: the token must be ASCII text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise TokenFileError(f"--admin_token_file={path}: the file must hold one token, with no "
                             "spaces or control characters")
    return token


@dataclass(frozen=True)
class ControlPlane:
    """The lock every control-plane call passes through, whatever its protocol."""

    token: str = ""  # empty: open, as in TF Serving
    reloads_enabled: bool = True
    rest_open: bool = False  # --rest_api_enable_model_control: REST loads/unloads without a token

    @classmethod
    def from_options(cls, token_file: str, reloads_enabled: bool, rest_open: bool = False) -> "ControlPlane":
        return cls(read_token(token_file) if token_file else "", reloads_enabled, rest_open)

    @property
    def locked(self) -> bool:
        return bool(self.token)

    def authorize(self, authorization: str | None, what: str) -> None:
        """Raise UNAUTHENTICATED unless ``authorization`` is ``Bearer <token>`` (or no token is set)."""
        if not self.token:
            return
        given = authorization or ""
        if not given[:len(BEARER)].lower() == BEARER:
            raise ServingError(Code.UNAUTHENTICATED,
                               f"{what} is a control-plane call: it needs 'authorization: Bearer <token>' "
                               "(the server was started with --admin_token_file)")
        if not hmac.compare_digest(given[len(BEARER):].strip().encode("utf-8", "replace"),
                                   self.token.encode("ascii")):
            raise ServingError(Code.UNAUTHENTICATED, f"{what}: the bearer token is not the admin token")

    def authorize_grpc(self, metadata: Iterable[tuple[str, str | bytes]] | None, what: str) -> None:
        self.authorize(grpc_authorization(metadata), what)

    def check_change(self, authorization: str | None, what: str, rest: bool = False) -> None:
        """A model load or unload over RPC (the repository API): turned off with config reloads
        (--enable_config_reload_rpc=false), locked by the token; on the REST port (``rest``) closed
        unless the token or --rest_api_enable_model_control opens it."""
        if not self.reloads_enabled:
            raise ServingError(Code.UNIMPLEMENTED, f"{what} is turned off on this server, as config reloads "
                                                   "over RPC are (--enable_config_reload_rpc=false)")
        if rest and not self.locked and not self.rest_open:
            raise ServingError(Code.PERMISSION_DENIED,
                               f"{what} is a control-plane call, closed on the REST port: start the server "
                               "with --admin_token_file (and send the token) or --rest_api_enable_model_control "
                               "(docs/security.md); gRPC's RepositoryModelLoad/Unload take it as TF Serving's "
                               "reloads are taken")
        self.authorize(authorization, what)

    def check_reload(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if not self.reloads_enabled:
            raise ServingError(Code.UNIMPLEMENTED, "Config reloads over RPC are turned off on this server "
                                                   "(--enable_config_reload_rpc=false)")
        self.authorize_grpc(metadata, "HandleReloadConfigRequest")

    def describe(self, grpc_address: str | None, rest_address: str | None,
                 grpc_socket: str = "") -> list[str]:
        """The start-up lines: for each port (None: not served), its control-plane calls and who can
        make them, from the real bind addresses."""
        lines = []
        if grpc_address is not None or grpc_socket:
            calls = ("config reloads (HandleReloadConfigRequest), model loads and unloads (V2 RepositoryModelLoad/"
                     "Unload) and the profiler") if self.reloads_enabled \
                else "the profiler (config reloads, model loads and unloads over RPC are off)"
            who = ([_reach(grpc_address, "gRPC port")] if grpc_address is not None else []) + \
                ([f"local users who can open {grpc_socket}"] if grpc_socket else [])
            lines.append(f"Control plane on the gRPC port ({calls}): {self._who(' and '.join(who))}, as in TF Serving")
        if rest_address is not None:
            calls = "model loads and unloads (POST /v2/repository/models/{name}/load|unload)"
            if not self.reloads_enabled:
                who = "off (--enable_config_reload_rpc=false)"
            elif self.locked or self.rest_open:
                who = self._who(_reach(rest_address, "REST port"))
            else:
                who = ("closed (TF Serving has no REST control plane); --admin_token_file or "
                       "--rest_api_enable_model_control opens it")
            lines.append(f"Control plane on the REST port ({calls}): {who}")
        if not self.locked:
            lines.append("Set --admin_token_file to require a token for control-plane calls (docs/security.md)")
        return lines

    def _who(self, reach: str) -> str:
        if self.locked:
            return f"{reach}, with the admin token (--admin_token_file)"
        return f"open to {reach}"


def _reach(address: str, port: str) -> str:
    return "this machine only" if _loopback(address) else f"every client that reaches the {port} ({address})"


def grpc_authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``authorization`` value of a call's metadata, if it has one."""
    for key, item in metadata or ():
        if key == "authorization":
            return item.decode("latin-1") if isinstance(item, bytes) else item
    return None


def _loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "localhost") or address.startswith("127.")


def token_file_permissions_warning(path: str) -> str | None:
    """A token file others can read is a token others know: say so at start."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o044:
        return (f"--admin_token_file={path} can be read by other users (mode {mode & 0o777:o}): "
                "chmod 600 it")
    return None
