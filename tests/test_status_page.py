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
from pyserving.protocols.rest import status_page

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
    arrive(broken, 7, not_a_saved_model)
    wait_for(lambda: _broken_version(server).get("error"), 60, "version 7 of 'broken' to fail")
    yield server
    assert server.stop() == 0


def _broken_version(server) -> dict:
    models = {m["name"]: m for m in server.get("/v1/status").json()["models"]}
    return (models["broken"]["versions"] or [{}])[0]


def _send_traffic(server, good: int = 5) -> None:
    for i in range(good):
        r = server.post("/v1/models/hpt:predict", json={"instances": [float(i)]})
        assert r.json() == {"predictions": [i / 2 + 2]}, r.text
    bad = server.post("/v1/models/hpt:predict", json={"instances": "not a tensor"})
    assert bad.status_code == 400


def _chromium(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess:
    # --virtual-time-budget: the page's timers run (its refreshes from /v1/status) and Chromium
    # waits for their fetches before it dumps or shoots; the budget is virtual ms, not a sleep.
    result = subprocess.run(
        [system_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *flags, url],
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
    assert hpt["versions"] == [{"version": 123, "state": "AVAILABLE", "error": None, "requests": 5}]
    assert hpt["labels"] == {"stable": 123} and hpt["served_version"] == 123 and hpt["problem"] is None
    default = {s["name"]: s for s in hpt["signatures"]}["serving_default"]
    assert default["inputs"] == [{"alias": "x", "tensor": "x:0", "dtype": "DT_FLOAT", "shape": [-1, 1]}]
    assert default["outputs"] == [{"alias": "y", "tensor": "y:0", "dtype": "DT_FLOAT", "shape": [-1, 1]}]
    assert hpt["requests"]["total"] >= 6 and hpt["requests"]["errors"] >= 1
    assert hpt["requests"]["per_second"] > 0 and hpt["requests"]["mean_latency_ms"] > 0
    broken = models["broken"]
    assert broken["served_version"] is None and broken["signatures"] == []
    assert broken["versions"][0]["state"] == "END"
    assert broken["versions"][0]["error"].startswith("DATA_LOSS: Cannot parse the SavedModel at ")
    assert HOSTILE in broken["versions"][0]["error"]


def test_the_page_in_headless_chromium(server, tmp_path):
    before = server.get("/v1/status").json()
    _send_traffic(server)
    page = _chromium(tmp_path, server.rest_url + "/", "--dump-dom").stdout
    dom = _Dom(page).root

    assert dom.find("title").text() == "pyserving status"
    assert int(dom.find(id="live").attrs["data-updates"]) >= 1  # the script fetched /v1/status and redrew
    hpt = dom.find("section", data_model="hpt")
    assert hpt.find("h2").text() == "hpt"
    assert "serving version 123" in hpt.text() and "stable \u2192 123" in hpt.text()
    row = hpt.find("tr", data_version="123")
    assert [td.text() for td in row.find_all("td")][:3] == ["123", "AVAILABLE", "stable"]
    signature = [td.text() for td in hpt.find("tr", data_signature="serving_default").find_all("td")]
    assert signature == ["serving_default", "tensorflow/serving/predict", "x DT_FLOAT [-1, 1]", "y DT_FLOAT [-1, 1]"]
    assert hpt.find("tr", data_signature="regress_x2_to_y3").find_all("td")[2].text() == "inputs DT_FLOAT [-1, 1]"
    old = next(m for m in before["models"] if m["name"] == "hpt")["requests"]
    assert int(_field(hpt, "requests")) >= old["total"] + 6
    assert int(_field(hpt, "errors")) >= old["errors"] + 1
    assert float(_field(hpt, "rate")) > 0
    assert re.fullmatch(r"\d+\.\d\d ms", _field(hpt, "latency")), _field(hpt, "latency")

    broken = dom.find("section", data_model="broken")
    assert "not serving" in broken.text()
    cells = [td.text() for td in broken.find("tr", data_version="7").find_all("td")]
    assert cells[1] == "END"
    assert cells[4].startswith("DATA_LOSS: Cannot parse the SavedModel at ") and HOSTILE in cells[4]
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
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert server.get("/v1/status").status_code == 200
    assert request_counts() == counted
    assert server.post("/").status_code == 404  # only GET


def test_data_cannot_close_the_script_block():
    name = "</script><script>alert(1)</script><!--"
    page = status_page.render({"models": [{"name": name}]})
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

    def metadata(self, spec, fields):
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
