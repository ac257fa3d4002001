"""--ssl_config_file: TLS on the gRPC port, HTTPS on the REST port, mutual TLS, bad material."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import models
from support.server import BIN_DIR, ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = "half"


@dataclass(frozen=True)
class Pem:
    key: bytes
    cert: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: x509.Name | None, issuer_key, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer_name or name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: bytes
    ca_file: Path
    server: Pem
    client: Pem
    client_files: tuple[str, str]  # (cert, key) for requests


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca_cert = _cert("pyserving test CA", ca_key, None, ca_key, ca=True)
    server_key = _key()
    server_cert = _cert("localhost", server_key, ca_cert.subject, ca_key, server=True)
    client_key = _key()
    client_cert = _cert("test client", client_key, ca_cert.subject, ca_key)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    ca_file = d / "ca.pem"
    ca_file.write_bytes(pem(ca_cert))
    (d / "client.pem").write_bytes(pem(client_cert))
    (d / "client.key").write_bytes(_key_pem(client_key))
    return Pki(ca=pem(ca_cert), ca_file=ca_file, server=Pem(_key_pem(server_key), pem(server_cert)),
               client=Pem(_key_pem(client_key), pem(client_cert)),
               client_files=(str(d / "client.pem"), str(d / "client.key")))


def _ssl_config(path: Path, key: bytes, cert: bytes, custom_ca: bytes = b"",
                client_verify: bool = False) -> Path:
    def quoted(data: bytes) -> str:
        return '"' + data.decode().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    text = f"server_key: {quoted(key)}\nserver_cert: {quoted(cert)}\n"
    if custom_ca:
        text += f"custom_ca: {quoted(custom_ca)}\n"
    if client_verify:
        text += "client_verify: true\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory, pki):
    """One TLS server and one mutual-TLS server, started together."""
    d = tmp_path_factory.mktemp("tls")
    base = d / MODEL
    models.export_tf1_half_plus_two(str(base / "1"))
    tls = _ssl_config(d / "tls.conf", pki.server.key, pki.server.cert)
    mtls = _ssl_config(d / "mtls.conf", pki.server.key, pki.server.cert, pki.ca, client_verify=True)
    started = [ServerProcess(f"--model_name={MODEL}", f"--model_base_path={base}", f"--ssl_config_file={conf}",
                             log_path=d / f"{conf.stem}.log") for conf in (tls, mtls)]
    try:
        for server in started:
            server.wait_ready()
        yield {"tls": started[0], "mtls": started[1]}
    finally:
        for server in started:
            server.stop()


def _predict(channel: grpc.Channel) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[6.0], [-2.0]], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
    return list(response.outputs["y"].float_val)


def test_grpc_predict_over_tls(servers, pki):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with grpc.secure_channel(servers["tls"].grpc_target, credentials) as channel:
        assert _predict(channel) == [5.0, 1.0]
    assert "TLS" in servers["tls"].log()


def test_plaintext_client_is_refused_on_tls_port(servers):
    with grpc.insecure_channel(servers["tls"].grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as e:
            _predict(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_not_trusting_the_ca_is_refused(servers, pki):
    # Trusting only the client certificate (a different, non-CA cert) must fail verification.
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.client.cert)
    with grpc.secure_channel(servers["tls"].grpc_target, credentials) as channel:
        with pytest.raises(grpc.RpcError) as e:
            _predict(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rest_serves_https(servers, pki):
    port = servers["tls"].rest_port
    response = requests.get(f"https://127.0.0.1:{port}/v1/models/{MODEL}", verify=str(pki.ca_file), timeout=30)
    assert response.status_code == 200
    assert response.json()["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=30)


def test_mtls_client_with_certificate_succeeds(servers, pki):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca, private_key=pki.client.key,
                                               certificate_chain=pki.client.cert)
    with grpc.secure_channel(servers["mtls"].grpc_target, credentials) as channel:
        assert _predict(channel) == [5.0, 1.0]
    port = servers["mtls"].rest_port
    response = requests.get(f"https://127.0.0.1:{port}/v1/models/{MODEL}", verify=str(pki.ca_file),
                            cert=pki.client_files, timeout=30)
    assert response.status_code == 200
    assert response.json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_mtls_client_without_certificate_is_refused(servers, pki):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with grpc.secure_channel(servers["mtls"].grpc_target, credentials) as channel:
        with pytest.raises(grpc.RpcError) as e:
            _predict(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    port = servers["mtls"].rest_port
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        requests.get(f"https://127.0.0.1:{port}/v1/models/{MODEL}", verify=str(pki.ca_file), timeout=30)


def _run_server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN_DIR / "tensorflow_model_server"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case, needle", [
    ("malformed", "Error parsing text-format tensorflow.serving.SSLConfig"),
    ("missing", "--ssl_config_file="),
    ("key_not_pem", "bad PEM"),
    ("key_not_matching", "bad PEM"),
    ("no_cert", "server_key and server_cert are required"),
    ("verify_without_ca", "client_verify needs custom_ca"),
])
def test_bad_ssl_config_exits_with_one_line(tmp_path, pki, case, needle):
    conf = tmp_path / "ssl.conf"
    if case == "malformed":
        conf.write_text('server_key: "abc" server_cert: ')
    elif case == "key_not_pem":
        _ssl_config(conf, b"this is not a PEM key", pki.server.cert)
    elif case == "key_not_matching":
        _ssl_config(conf, pki.client.key, pki.server.cert)
    elif case == "no_cert":
        _ssl_config(conf, pki.server.key, b"")
    elif case == "verify_without_ca":
        _ssl_config(conf, pki.server.key, pki.server.cert, client_verify=True)
    # The checks run before any port opens or model loads.
    out = _run_server_cli(f"--model_base_path={tmp_path / 'models'}", f"--ssl_config_file={conf}")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert lines[0].startswith("tensorflow_model_server: ")
