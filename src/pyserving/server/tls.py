"""TLS for both ports from TF Serving's --ssl_config_file (text tensorflow.serving.SSLConfig).

The file holds PEM *contents* (not paths): server_key, server_cert, custom_ca and
client_verify. gRPC on --port uses them via grpc.ssl_server_credentials; the REST port
serves HTTPS with an ssl.SSLContext built from the same material. The Unix socket
(--grpc_socket_path) stays plaintext: it is local only, as in TF Serving.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass

import grpc

from pyserving.config.protos import ConfigFileError, SSLConfig, read_text_proto


@dataclass(frozen=True)
class TlsConfig:
    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    @classmethod
    def from_file(cls, path: str) -> "TlsConfig":
        """Read and validate the file; ConfigFileError (one line) on any problem."""
        proto = read_text_proto(path, SSLConfig, "--ssl_config_file")
        config = cls(server_key=proto.server_key, server_cert=proto.server_cert,
                     custom_ca=proto.custom_ca, client_verify=proto.client_verify)
        config.validate(path)
        return config

    def validate(self, path: str = "ssl_config_file") -> None:
        if not self.server_key.strip() or not self.server_cert.strip():
            raise ConfigFileError(f"Invalid SSL config {path}: server_key and server_cert are required")
        if self.client_verify and not self.custom_ca.strip():
            raise ConfigFileError(
                f"Invalid SSL config {path}: client_verify needs custom_ca to verify client certificates")
        # Building the context parses every PEM and checks that key and certificate match.
        try:
            self.ssl_context()
        except (ssl.SSLError, ValueError) as e:
            reason = " ".join(str(e).split())
            raise ConfigFileError(f"Invalid SSL config {path}: bad PEM key/certificate material ({reason})") from e

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server_key.encode(), self.server_cert.encode())],
            root_certificates=self.custom_ca.encode() or None,
            require_client_auth=self.client_verify)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for HTTPS on the REST port."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain only reads files: write the material into a private (0700) directory,
        # as 0600 files, for the duration of the call.
        with tempfile.TemporaryDirectory(prefix="pyserving-tls-") as tmp:
            key_path = _write_private(os.path.join(tmp, "server.key"), self.server_key)
            cert_path = _write_private(os.path.join(tmp, "server.crt"), self.server_cert)
            context.load_cert_chain(cert_path, key_path)
        if self.custom_ca.strip():
            context.load_verify_locations(cadata=self.custom_ca)
            # Like gRPC with root certificates: a client certificate is checked when presented
            # and required only with client_verify.
            context.verify_mode = ssl.CERT_REQUIRED if self.client_verify else ssl.CERT_OPTIONAL
        return context


def _write_private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path
