"""Models and config files in object storage, served from real protocol servers on loopback:
moto's S3 server and gcp-storage-emulator's GCS server, each in a thread of the test process, and
Azurite (Microsoft's Azure Storage emulator, installed by `make test` into .tools/npm) as a process."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from support import models
from support.server import ServerProcess, free_port, port_open, wait_for, wait_state
from support.traffic import Traffic

TFS = Path(__file__).resolve().parents[2] / "shared" / "tfs-testdata"
HALF_PLUS_TWO = TFS / "saved_model_half_plus_two_cpu" / "00000123"
# Installed by `make test-packages` (tools/ensure-npm-tools.sh), never by a test.
AZURITE = Path(__file__).resolve().parents[1] / ".tools" / "npm" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's account and its published, well-known key (Azurite's README): no real account's.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Store:
    """A store server on loopback, the fsspec filesystem to fill it, and the server's environment."""

    def __init__(self, kind: str) -> None:
        self.kind, self.port = kind, free_port()
        # moto keeps its buckets process-wide, whichever server is asked: one bucket per store.
        self.bucket = f"models-{self.port}"
        endpoint = f"http://127.0.0.1:{self.port}"
        self.secrets: tuple[str, ...] = ()  # what must never reach the server's log
        self._server = self._azurite = None
        if kind == "s3":
            import s3fs
            from moto.server import ThreadedMotoServer

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            secret = "pyserving-test-secret-access-key"
            credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": secret,
                           "AWS_DEFAULT_REGION": "us-east-1"}
            self.secrets = (secret,)
            self.env = {**credentials, "AWS_ENDPOINT_URL": endpoint}
            # TF Serving's own variables for an S3-compatible store, as its users set them.
            self.tf_serving_env = {**credentials, "S3_ENDPOINT": f"127.0.0.1:{self.port}", "S3_USE_HTTPS": "0"}
            self.fs = s3fs.S3FileSystem(key="test", secret=secret, client_kwargs={"endpoint_url": endpoint})
            self.fs.mkdir(self.bucket)
        elif kind == "azure":
            import adlfs
            from azure.storage.blob import BlobServiceClient

            connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                          f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};")
            self.secrets = (AZURITE_KEY, connection)
            try:
                self._start_azurite()
                BlobServiceClient.from_connection_string(connection).create_container(self.bucket)
            except BaseException:
                self.stop()
                raise
            # The standard variable of Azure's SDKs, which adlfs reads.
            self.env = {"AZURE_STORAGE_CONNECTION_STRING": connection}
            self.fs = adlfs.AzureBlobFileSystem(connection_string=connection)
        else:
            from gcp_storage_emulator.server import create_server

            self._server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=self.bucket)
            self._server.start()
            self.env = {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon",
                        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            import gcsfs

            self.fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=endpoint)
        self.scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[kind]

    def _start_azurite(self) -> None:
        if not AZURITE.exists():
            pytest.fail(f"Azurite is not installed at {AZURITE}: run `make test-packages` "
                        "(tools/ensure-npm-tools.sh installs it with npm)")
        self._location = tempfile.mkdtemp(prefix="azurite-")
        self._azurite_log = open(os.path.join(self._location, "azurite.log"), "wb")
        self._azurite = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
             self._location, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
            stdout=self._azurite_log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            if self._azurite.poll() is not None:
                log = Path(self._location, "azurite.log").read_text(errors="replace")
                raise AssertionError(f"Azurite exited with {self._azurite.returncode}:\n{log}")
            if not port_open(self.port):
                return False
            try:  # any HTTP answer (an unsigned request is refused) means the blob service is up
                requests.get(f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}?comp=list", timeout=5)
            except requests.RequestException:
                return False
            return True

        wait_for(answers, 60, "Azurite to answer", interval=0.1)

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def upload(self, local: Path, key: str, skip: tuple[str, ...] = ()) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = path.relative_to(local).as_posix()
            if relative not in skip:
                self.fs.put_file(str(path), f"{self.bucket}/{key}/{relative}")
        self.fs.invalidate_cache()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._azurite is not None:
            self._azurite.terminate()
            try:
                self._azurite.wait(30)
            except subprocess.TimeoutExpired:
                self._azurite.kill()
                self._azurite.wait()
            self._azurite_log.close()
            shutil.rmtree(self._location, ignore_errors=True)


@pytest.fixture(params=["s3", "gcs", "azure"], scope="module")
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
    assert not [secret for secret in store.secrets if secret in server.log()]


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
        def copies() -> list[str]:  # the versions copied (the cache's own lock files are hidden)
            return [p.name.rsplit("-", 1)[1] for p in cache.iterdir() if not p.name.startswith(".")]

        wait_for(lambda: copies() == ["2"], 30, "1's copy removed")
    finally:
        assert server.stop() == 0
    assert not [p for p in cache.iterdir() if p.name.startswith(".partial-")]  # no download left half-done
    assert not [secret for secret in store.secrets if secret in server.log()]


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


def test_config_file_in_azure_with_an_adls_gen2_url_of_the_account(tmp_path):
    """The config file read from az://, the base path in ADLS Gen2's own form, which names the
    account in the host (abfss://container@account.dfs.core.windows.net/path)."""
    store = Store("azure")
    try:
        store.upload(HALF_PLUS_TWO, "models/hpt/1")
        base_path = f"abfss://{store.bucket}@{AZURITE_ACCOUNT}.dfs.core.windows.net/models/hpt"
        config = tmp_path / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "{base_path}" '
                          'model_platform: "tensorflow" } }\n')
        store.fs.put_file(str(config), f"{store.bucket}/config/models.config")
        server = _serve(store, tmp_path, f"--model_config_file={store.url('config/models.config')}")
        try:
            assert _predict(server, "hpt", [2.0, 4.0]) == [3.0, 4.0]
            assert f"Copied {base_path}/1" in server.log()
        finally:
            assert server.stop() == 0
        assert not [secret for secret in store.secrets if secret in server.log()]
    finally:
        store.stop()


def test_the_account_of_an_adls_gen2_url_is_the_one_used(monkeypatch):
    from pyserving.storage.files import filesystem

    for name in [n for n in os.environ if n.startswith("AZURE_STORAGE_")]:
        monkeypatch.delenv(name)  # a connection string would name its own account
    fs = filesystem("abfss://models@pyservingdocs.dfs.core.windows.net/hpt")
    assert fs.account_name == "pyservingdocs"
    assert fs.account_url == "https://pyservingdocs.blob.core.windows.net"


def test_a_store_without_its_client_says_which_extra_to_install(tmp_path):
    # The real server, with adlfs hidden by a package of that name that fails to import.
    hidden = tmp_path / "hide" / "adlfs"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'adlfs\'", name="adlfs")\n')
    server = ServerProcess("--model_name=m", "--model_base_path=az://container/models/m",
                           log_path=tmp_path / "server.log", env={"PYTHONPATH": str(hidden.parent)}).wait_ready()
    try:
        wait_for(lambda: "Cannot list base path az://container/models/m" in server.log(), 60, "the listing to fail")
        assert "pip install 'pyserving[azure]'" in server.log()
    finally:
        assert server.stop() == 0


def test_a_bucket_key_that_would_leave_the_cache_is_refused(tmp_path):
    """An object named hpt/2/../../(...)/x: version 2 is not loaded, version 1 serves on, nothing
    is written outside the cache, and the cache folder's foreign files stay (it deletes only the
    copies it made)."""
    store = Store("s3")
    target = tmp_path / "outside" / "x.txt"
    target.parent.mkdir()
    target.write_text("precious")
    cache = tmp_path / "cache"
    (cache / "user_data").mkdir(parents=True)  # --model_cache_dir may hold the operator's own files
    (cache / "user_data" / "keep.txt").write_text("mine")
    try:
        store.upload(HALF_PLUS_TWO, "hpt/1")
        server = _serve(store, tmp_path, "--model_name=hpt", f"--model_base_path={store.url('hpt')}",
                        f"--model_cache_dir={cache}", "--max_num_load_retries=0")
        try:
            store.upload(HALF_PLUS_TWO, "hpt/2")
            escape = "../" * (len(cache.parts) + 4) + str(target).lstrip("/")
            store.fs.pipe(f"{store.bucket}/hpt/2/{escape}", b"overwritten by a bucket key")
            store.fs.invalidate_cache()
            status = wait_state(server, "hpt", 2, "END")
            assert "would leave the version's folder" in status["status"]["error_message"]
            assert _predict(server, "hpt", [1.0]) == [2.5]  # version 1 serves on
            assert target.read_text() == "precious"
            assert not [p for p in cache.iterdir() if p.name.startswith(".partial-")]
            assert (cache / "user_data" / "keep.txt").read_text() == "mine"  # polls cleaned the cache since
            assert "Traceback" not in server.log()
        finally:
            assert server.stop() == 0
    finally:
        store.stop()


def test_workers_sharing_a_cache_each_load_the_version(tmp_path):
    """--num_workers=2 on one --model_cache_dir: both copy or reuse the version, neither fails
    (they raced to rename their copies in: 'Directory not empty', and one served nothing)."""
    store = Store("s3")
    try:
        store.upload(HALF_PLUS_TWO, "hpt/00000123")
        server = _serve(store, tmp_path, "--model_name=hpt", f"--model_base_path={store.url('hpt')}",
                        f"--model_cache_dir={tmp_path / 'cache'}", "--num_workers=2")
        try:
            loaded = f"Loaded {store.url('hpt/00000123')} with the"
            wait_for(lambda: server.log().count(loaded) == 2, 120, "both workers to load the version")
            for _ in range(20):  # connections spread over both workers
                assert _predict(server, "hpt", [1.0]) == [2.5]
            assert "Directory not empty" not in server.log() and "failed (attempt" not in server.log()
        finally:
            assert server.stop() == 0
    finally:
        store.stop()


def test_a_lock_folder_planted_as_a_symlink_is_never_followed(tmp_path):
    """The cache's lock folder replaced by a link to elsewhere: no lock file is made there, and a
    copy whose lock can't be taken is not deleted (a later poll tries again)."""
    from pyserving.storage.files import VersionCache

    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    (cache / "0123456789abcdef-1").mkdir(parents=True)
    elsewhere.mkdir()
    (cache / ".locks").symlink_to(elsewhere, target_is_directory=True)
    versions = VersionCache(str(cache))
    assert versions.root == str(cache)  # in use, as once a version was copied
    versions.keep_only(set())
    assert list(elsewhere.iterdir()) == []
    assert (cache / "0123456789abcdef-1").is_dir()
