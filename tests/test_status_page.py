"""The status page (GET / on the REST port), as a browser shows it: the real server, TF Serving's
half_plus_two beside a model whose version fails to load (from a folder whose name is markup), and
headless Chromium (installed by `make test`: tools/ensure-debian-packages.sh) running the page's script."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support.server import HALF_PLUS_TWO, ServerProcess, arrive, model_config, system_tool, wait_for

from pyserving.errors import ServingError
from pyserving.protocols.rest import status_html, status_page

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "test-artifacts" / "status-page.png"  # git-ignored
HOSTILE = "broken<img src=x onerror=alert(1)>"  # a folder name: load errors quote the path
METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("status_page")
    broken = root / HOSTILE
    broken.mkdir()  # its version arrives once serving: a model that can't load at start stops the server

    def not_a_saved_model(path: str) -> None:
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")

    config = root / "models.config"
    config.write_text(model_config({"hpt": str(HALF_PLUS_TWO), "broken": str(broken)},
                                   {"hpt": 'version_labels { key: "stable" value: 123 }'}))
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    server = ServerProcess(f"--model_config_file={config}", f"--monitoring_config_file={monitoring}",
                           "--max_num_load_retries=0", log_path=root / "server.log").wait_ready()
    try:
        arrive(broken, 7, not_a_saved_model)
        wait_for(lambda: _broken_version(server).get("error"), 60, "version 7 of 'broken' to fail")
    except BaseException:  # a fixture that fails never reaches its teardown: stop the server here
        server.stop()
        raise
    yield server
    assert server.stop() == 0


def _broken_version(server) -> dict:
    return (server.get("/v1/status", params={"model": "broken"}).json()["versions"] or [{}])[0]


def _send_traffic(server, good: int = 5) -> None:
    for i in range(good):
        r = server.post("/v1/models/hpt:predict", json={"instances": [float(i)]})
        assert r.json() == {"predictions": [i / 2 + 2]}, r.text
    bad = server.post("/v1/models/hpt:predict", json={"instances": "not a tensor"})
    assert bad.status_code == 400


def _chromium(tmp_path: Path, url: str, *flags: str, virtual_time: bool = True) -> subprocess.CompletedProcess:
    # --virtual-time-budget: the page's timers run (its refreshes from /v1/status) and Chromium
    # waits for their fetches before it dumps or shoots; the budget is virtual ms, not a sleep.
    # Without it, the dump comes at the load event, and the page's clock is real time.
    budget = ["--virtual-time-budget=5000"] if virtual_time else []
    result = subprocess.run(
        [system_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *budget, *flags, url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class _Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []  # children: _Node or str

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, **attrs: str) -> list["_Node"]:
        found = []
        for child in self.children:
            if isinstance(child, _Node):
                if (tag is None or child.tag == tag) and all(
                        child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                    found.append(child)
                found.extend(child.find_all(tag, **attrs))
        return found

    def find(self, tag: str | None = None, **attrs: str) -> "_Node":
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in: {self.text()[:500]}"
        return found[0]


class _Dom(HTMLParser):
    """Chromium's --dump-dom as a tree (it closes every element that isn't void)."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = _Node("#document", {})
        self._stack = [self.root]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs))
        self._stack[-1].children.append(node)
        if tag not in self.VOID:
            self._stack.append(node)

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            assert self._stack.pop().tag == tag

    def handle_data(self, data):
        self._stack[-1].children.append(data)


def _field(section: _Node, name: str) -> str:
    return section.find(data_field=name).text()


def test_the_json_summary(server):
    _send_traffic(server)
    models = {m["name"]: m for m in server.get("/v1/status").json()["models"]}
    assert set(models) == {"hpt", "broken"}
    hpt = models["hpt"]
    assert (hpt["state"], hpt["served_version"], hpt["versions"], hpt["problem"]) == ("LOADED", 123, 1, None)
    assert hpt["requests"]["total"] >= 6 and hpt["requests"]["errors"] >= 1
    assert hpt["requests"]["per_second"] > 0 and hpt["requests"]["mean_latency_ms"] > 0
    assert 0 < hpt["requests"]["p50_ms"] < 1000
    assert hpt["memory_bytes"] is None  # no budget: nothing estimates it
    broken = models["broken"]
    assert (broken["state"], broken["served_version"]) == ("UNAVAILABLE", None)
    assert broken["problem"].startswith("DATA_LOSS: Cannot parse the SavedModel at ") and HOSTILE in broken["problem"]


def test_a_models_details(server):
    _send_traffic(server)
    hpt = server.get("/v1/status", params={"model": "hpt"}).json()
    assert hpt["versions"] == [{"version": 123, "state": "AVAILABLE", "error": None, "requests": hpt["versions"][0]["requests"]}]
    assert hpt["versions"][0]["requests"] >= 5
    assert hpt["labels"] == {"stable": 123} and hpt["served_version"] == 123 and hpt["problem"] is None
    default = {s["name"]: s for s in hpt["signatures"]}["serving_default"]
    assert default["inputs"] == [{"alias": "x", "tensor": "x:0", "dtype": "DT_FLOAT", "shape": [-1, 1]}]
    assert default["outputs"] == [{"alias": "y", "tensor": "y:0", "dtype": "DT_FLOAT", "shape": [-1, 1]}]
    broken = server.get("/v1/status", params={"model": "broken"}).json()
    assert broken["served_version"] is None and broken["signatures"] == []
    assert broken["versions"][0]["state"] == "END"
    assert broken["versions"][0]["error"].startswith("DATA_LOSS: Cannot parse the SavedModel at ")
    unknown = server.get("/v1/status", params={"model": "<nope>"})
    assert unknown.status_code == 404 and "No model named '<nope>' is configured" in unknown.json()["error"]


def test_the_page_in_headless_chromium(server, tmp_path):
    before = server.get("/v1/status").json()
    _send_traffic(server)
    page = _chromium(tmp_path, server.rest_url + "/?model=hpt", "--dump-dom").stdout
    dom = _Dom(page).root

    assert dom.find("title").text() == "pyserving status"
    assert int(dom.find(id="live").attrs["data-updates"]) >= 1  # the script fetched /v1/status and redrew
    hpt = dom.find("tr", data_model="hpt")
    assert hpt.find("td").text() == "hpt" and hpt.attrs["data-state"] == "LOADED"
    assert _field(hpt, "state") == "loaded" and _field(hpt, "version") == "123"
    old = next(m for m in before["models"] if m["name"] == "hpt")["requests"]
    assert int(_field(hpt, "errors")) >= old["errors"] + 1
    assert float(_field(hpt, "rate")) > 0
    assert re.fullmatch(r"\d+\.\d\d ms", _field(hpt, "p50")), _field(hpt, "p50")
    # ?model=hpt opened its details: versions, labels, signatures.
    details = dom.find("tr", data_details="hpt")
    assert "stable \u2192 123" in details.text()
    row = details.find("tr", data_version="123")
    assert [td.text() for td in row.find_all("td")][:3] == ["123", "AVAILABLE", "stable"]
    signature = [td.text() for td in details.find("tr", data_signature="serving_default").find_all("td")]
    assert signature == ["serving_default", "tensorflow/serving/predict", "x DT_FLOAT [-1, 1]", "y DT_FLOAT [-1, 1]"]
    assert details.find("tr", data_signature="regress_x2_to_y3").find_all("td")[2].text() == "inputs DT_FLOAT [-1, 1]"

    broken = dom.find("tr", data_model="broken")
    assert _field(broken, "state") == "unavailable"
    problem = _field(broken, "problem")
    assert problem.startswith("DATA_LOSS: Cannot parse the SavedModel at ") and HOSTILE in problem
    # The folder's name is shown as text, never made an element.
    assert dom.find_all("img") == [] and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_screenshot(server, tmp_path):
    _send_traffic(server)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    _chromium(tmp_path, server.rest_url + "/", f"--screenshot={SCREENSHOT}", "--window-size=1280,900",
              "--hide-scrollbars")
    png = SCREENSHOT.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 900)  # IHDR: width, height
    assert len(png) > 30_000, len(png)  # a blank or error page compresses to a few KB


def test_the_page_is_not_a_model_request(server):
    def request_counts() -> list[str]:
        text = server.get(METRICS_PATH).text
        return sorted(line for line in text.splitlines() if line.startswith(":tensorflow:serving:request_count{"))

    _send_traffic(server, good=1)
    counted = request_counts()
    assert any('model_name="hpt"' in line for line in counted)
    page = server.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert server.get("/v1/status", params={"model": "hpt"}).status_code == 200
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert server.get("/v1/status").status_code == 200
    assert request_counts() == counted
    assert server.post("/").status_code == 404  # only GET


def test_data_cannot_close_the_script_block():
    name = "</script><script>alert(1)</script><!--"
    page = status_html.render({"models": [{"name": name}]})
    data = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == {"models": [{"name": name}]}
    assert "alert" not in page.replace(data, "")


class _FakeDataPlane:
    def readiness(self):
        return {"m": True}

    async def listed_status(self, name):
        return []

    def version_labels(self, name):
        return {}

    def model_state(self, name, statuses):
        return "UNAVAILABLE"

    def resolve(self, spec):
        raise ServingError.unavailable("nothing loaded")


def test_rates_are_over_the_last_ten_seconds():
    now, count = [0.0], [0.0]

    async def views():
        return [[(":tensorflow:serving:request_count", "counter", "", [
            (":tensorflow:serving:request_count_total", {"model_name": "m", "status": "OK"}, count[0])])]]

    page = status_page.StatusPage(_FakeDataPlane(), views, clock=lambda: now[0])

    def rate_at(seconds: float, total: float) -> float:
        now[0], count[0] = seconds, total
        summary = asyncio.run(page.summary())
        assert summary["models"][0]["problem"] == "nothing loaded"
        return summary["models"][0]["requests"]["per_second"]

    assert rate_at(5, 50) == 10.0  # since start: 50 in 5 s
    assert rate_at(20, 50) == 0.0  # nothing new since the sample at 5 s
    assert rate_at(21, 60) == pytest.approx(10 / 16, abs=0.01)  # from the newest sample 10 s old
    assert rate_at(40, 100) == pytest.approx(40 / 19, abs=0.01)
    assert rate_at(41, 0) == 0.0  # counts that went down (a restarted worker): never negative


@pytest.mark.serial  # measures the page's first render
def test_a_thousand_models_under_a_budget_of_three(tmp_path):
    """1,000 configured models, 3 loaded at most: one compact table, fast, every state right, the
    models not loaded shown as a quiet state, never as errors; filter and details work."""
    names = [f"m{i:04d}" for i in range(1000)]
    config = tmp_path / "models.config"
    config.write_text(model_config({name: str(HALF_PLUS_TWO) for name in names}))
    server = ServerProcess(f"--model_config_file={config}", "--max_loaded_models=3",
                           log_path=tmp_path / "server.log").wait_ready()
    try:
        for name in ("m0001", "m0500"):
            assert server.post(f"/v1/models/{name}:predict", json={"instances": [1.0]}).json() == \
                {"predictions": [2.5]}
        rows = server.get("/v1/status").json()["models"]
        assert len(rows) == 1000
        states = {m["name"]: m["state"] for m in rows}
        assert {n for n, s in states.items() if s == "LOADED"} == {"m0001", "m0500"}
        assert {s for n, s in states.items() if n not in ("m0001", "m0500")} == {"UNLOADED"}
        assert not [m for m in rows if m["problem"]]

        dom = _Dom(_chromium(tmp_path, server.rest_url + "/", "--dump-dom", virtual_time=False).stdout).root
        body = dom.find("body")
        # From navigation to the whole table drawn, in real time (130-310 ms on this machine).
        assert int(body.attrs["data-rendered-ms"]) < 1000, body.attrs
        shown = dom.find_all("tr", **{"class": "model"})
        assert [r.attrs["data-model"] for r in shown] == names  # sorted by name
        for r in shown:
            loaded = r.attrs["data-model"] in ("m0001", "m0500")
            assert _field(r, "state") == ("loaded" if loaded else "unloaded")
            assert not r.find_all(data_field="problem")
        counts = {b.attrs["data-state"]: b.text() for b in dom.find(id="counts").find_all("b", )
                  if "data-state" in b.attrs}
        assert counts == {"LOADED": "2", "LOADING": "0", "UNLOADED": "998", "UNAVAILABLE": "0"}

        # A state and a name filter at once, and an unloaded model's details.
        url = server.rest_url + "/?state=UNLOADED&filter=m000&model=m0002"
        view = _Dom(_chromium(tmp_path, url, "--dump-dom").stdout).root
        assert [r.attrs["data-model"] for r in view.find_all("tr", **{"class": "model"})] == \
            ["m0000"] + [f"m000{i}" for i in range(3, 10)]  # m0001 is loaded; m0002 is open
        assert [r.attrs["data-model"] for r in view.find_all("tr", **{"class": "model open"})] == ["m0002"]
        assert "Not loaded now: loads on its first request." in view.find("tr", data_details="m0002").text()
    finally:
        server.stop()
