"""Models and config files in object storage, served from real protocol servers on loopback:
moto's S3 server and gcp-storage-emulator's GCS server, each in a thread of the test process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from support import models
from support.server import ServerProcess, free_port, wait_for
from support.traffic import Traffic

TFS = Path(__file__).resolve().parents[2] / "shared" / "tfs-testdata"
HALF_PLUS_TWO = TFS / "saved_model_half_plus_two_cpu" / "00000123"


class Store:
    """A store server on loopback, the fsspec filesystem to fill it, and the server's environment."""

    def __init__(self, kind: str) -> None:
        self.kind, self.port = kind, free_port()
        # moto keeps its buckets process-wide, whichever server is asked: one bucket per store.
        self.bucket = f"models-{self.port}"
        endpoint = f"http://127.0.0.1:{self.port}"
        if kind == "s3":
            from moto.server import ThreadedMotoServer
            import s3fs

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}
            self.env = {**credentials, "AWS_ENDPOINT_URL": endpoint}
            # TF Serving's own variables for an S3-compatible store, as its users set them.
            self.tf_serving_env = {**credentials, "S3_ENDPOINT": f"127.0.0.1:{self.port}", "S3_USE_HTTPS": "0"}
            self.fs = s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": endpoint})
            self.fs.mkdir(self.bucket)
        else:
            from gcp_storage_emulator.server import create_server

            self._server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=self.bucket)
            self._server.start()
            self.env = {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon",
                        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            import gcsfs

            self.fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=endpoint)
        self.scheme = "s3" if kind == "s3" else "gs"

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def upload(self, local: Path, key: str, skip: tuple[str, ...] = ()) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = path.relative_to(local).as_posix()
            if relative not in skip:
                self.fs.put_file(str(path), f"{self.bucket}/{key}/{relative}")
        self.fs.invalidate_cache()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(params=["s3", "gcs"], scope="module")
def store(request):
    store = Store(request.param)
    yield store
    store.stop()


def _serve(store: Store, tmp: Path, *flags: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess(*flags, "--file_system_poll_wait_seconds=1", log_path=tmp / "server.log",
                         env=env or store.env).wait_ready()


def _predict(server: ServerProcess, model: str, instances: list) -> list:
    r = server.post(f"/v1/models/{model}:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_serves_tf_serving_half_plus_two_from_the_store(store, tmp_path):
    store.upload(HALF_PLUS_TWO, "hpt/00000123")
    server = _serve(store, tmp_path, "--model_name=hpt", f"--model_base_path={store.url('hpt')}")
    try:
        assert _predict(server, "hpt", [1.0, 2.0, 5.0]) == [2.5, 3.0, 4.5]
        assert "Copied " + store.url("hpt/00000123") in server.log()
    finally:
        assert server.stop() == 0


def _linear_value(server: ServerProcess, version: int | None = None) -> float:
    path = "/v1/models/linear" + (f"/versions/{version}" if version else "") + ":predict"
    r = requests.post(server.rest_url + path, json={"instances": [[1.0, 1.0]]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["y_sum"]


def _versions(server: ServerProcess) -> dict[int, str]:
    body = server.get("/v1/models/linear").json()
    return {int(v["version"]): v["state"] for v in body["model_version_status"]}


def test_a_version_loads_only_once_uploaded_whole_with_no_failed_request(store, tmp_path):
    local = tmp_path / "export"
    models.export_tf2_linear(str(local / "1"), scale=1.0)
    models.export_tf2_linear(str(local / "2"), scale=2.0)
    store.upload(local / "1", "linear/1")
    cache = tmp_path / "cache"
    server = _serve(store, tmp_path, "--model_name=linear", f"--model_base_path={store.url('linear')}",
                    f"--model_cache_dir={cache}")
    try:
        with Traffic(lambda: {4.0: 1, 8.0: 2}[_linear_value(server)], threads=2) as traffic:
            wait_for(lambda: traffic.report.ok > 10, 60, "traffic on version 1")
            # The variables first, the graph last: until saved_model.pb is there, 2 is not a model.
            store.upload(local / "2", "linear/2", skip=("saved_model.pb",))
            wait_for(lambda: "linear/2 is incomplete" in server.log(), 60, "the partial version to be seen")
            assert _versions(server) == {1: "AVAILABLE"}
            store.upload(local / "2", "linear/2")
            wait_for(lambda: _versions(server) == {2: "AVAILABLE", 1: "END"}, 120, "version 2 to replace 1")
            seen = traffic.report.ok
            wait_for(lambda: traffic.report.ok > seen + 10, 60, "traffic after the swap")
        assert traffic.report.failures == []
        assert traffic.report.versions[1] > 0 and traffic.report.versions[2] > 0
        assert _linear_value(server) == 8.0
        # The cache keeps only what the policy wants: version 2.
        wait_for(lambda: [p.name.rsplit("-", 1)[1] for p in cache.iterdir()] == ["2"], 30, "1's copy removed")
    finally:
        assert server.stop() == 0
    assert not [p for p in cache.iterdir() if p.name.startswith(".partial-")]  # no download left half-done


def test_an_outage_of_the_store_keeps_serving_and_is_logged_once(tmp_path):
    store = Store("s3")
    try:
        store.upload(HALF_PLUS_TWO, "hpt/00000123")
        server = _serve(store, tmp_path, "--model_name=hpt", f"--model_base_path={store.url('hpt')}")
    finally:
        store.stop()
    try:
        wait_for(lambda: "Cannot list base path" in server.log(), 60, "the outage to be noticed")
        noticed = time.monotonic()
        # Three more polls (one a second) while requests keep being answered from memory.
        while time.monotonic() - noticed < 3.5:
            assert _predict(server, "hpt", [1.0]) == [2.5]
        assert server.log().count("Cannot list base path") == 1
        status = server.get("/v1/models/hpt").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("123", "AVAILABLE")]
    finally:
        assert server.stop() == 0


def test_config_file_in_the_store_with_tf_serving_s3_variables(tmp_path):
    store = Store("s3")
    try:
        store.upload(HALF_PLUS_TWO, "hpt/00000123")
        config = tmp_path / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "{store.url("hpt")}" '
                          'model_platform: "tensorflow" } }\n')
        store.fs.put_file(str(config), f"{store.bucket}/models.config")
        server = _serve(store, tmp_path, f"--model_config_file={store.url('models.config')}",
                        env=store.tf_serving_env)
        try:
            assert _predict(server, "hpt", [2.0]) == [3.0]
        finally:
            assert server.stop() == 0
    finally:
        store.stop()


def test_a_store_without_its_client_says_which_extra_to_install():
    from pyserving.core.storage import StorageError, filesystem

    if _installed("adlfs"):
        pytest.fail("adlfs is installed here: this test needs a store whose client is missing")
    with pytest.raises(StorageError, match=r"pip install 'pyserving\[azure\]'"):
        filesystem("az://container/models/m")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
