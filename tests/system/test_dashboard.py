"""``/dashboard`` in a real headless Chromium (Debian's ``chromium``, driven by npm ``playwright-core``).

Two real hubs behind one gateway: the page lists both, shows a drain and a killed hub within 5 s of
each, and logs no console error, page error or failed request on the way. A screenshot of the page
after both goes to ``reports/dashboard/dashboard.png``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.procs import child_options, terminate
from hub.server import Hub
from tests.conftest import GatewayProcess, hub_entry, start_hub
from tests.sysdeps import PLAYWRIGHT_CORE, ROOT, binary, missing

pytestmark = pytest.mark.hub

DRIVER = Path(__file__).with_name("browser_driver.cjs")
SCREENSHOT = ROOT / "reports" / "dashboard" / "dashboard.png"
SHOWN_WITHIN_MS = 5000
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [3.0] * 128}]}).encode()


class Browser:
    """The driver script as a child: one JSON command a line in, one JSON answer a line out."""

    def __init__(self, chromium: str) -> None:
        node = binary("node", "nodejs")
        if not (PLAYWRIGHT_CORE / "package.json").is_file():
            missing("npm playwright-core", f"npm install --prefix {PLAYWRIGHT_CORE.parents[1]} playwright-core")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".venv" / "node"), "CHROMIUM": chromium,
               "PLAYWRIGHT_CORE": str(PLAYWRIGHT_CORE)}  # fmt: skip
        options = {**child_options(), "stdin": subprocess.PIPE}
        self.proc = subprocess.Popen(
            [node, str(DRIVER)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **options
        )
        self._answers: list[str] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True, name="browser-driver").start()
        self._answer(timeout_s=30)  # its ready line

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._arrived:
                self._answers.append(line)
                self._arrived.notify_all()

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: any(a.startswith("{") for a in self._answers), timeout_s):
                raise TimeoutError(
                    f"the browser driver said nothing in {timeout_s} s: {''.join(self._answers)[-2000:]}"
                )
            while not self._answers[0].startswith("{"):  # anything else it printed (a warning) is skipped
                self._answers.pop(0)
            return json.loads(self._answers.pop(0))

    def command(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout_s)

    def wait(self, js: str, timeout_ms: int) -> dict[str, Any]:
        return self.command("wait", timeout_s=timeout_ms / 1000 + 10, js=js, timeout_ms=timeout_ms)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(TimeoutError, BrokenPipeError, OSError):
                self.command("close", timeout_s=15)
        terminate(self.proc, timeout_s=5)


@pytest.fixture(scope="module")
def chromium() -> str:
    return binary("chromium", "chromium")


@pytest.fixture
def two_hubs(repository: Path) -> Iterator[tuple[Hub, Hub]]:
    west = start_hub(repository, "west-1")
    try:
        east = start_hub(repository, "east-1")
    except BaseException:
        west.stop()
        raise
    yield west, east
    west.stop()
    east.stop()


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.close()


def cell(hub: str, field: str) -> str:
    """A JS expression: the text of ``field`` in ``hub``'s row of the hubs table ('' until it exists)."""
    return (
        f"((document.querySelector('#hubs tr[data-hub=\"{hub}\"] [data-field=\"{field}\"]') || {{}}).textContent || '')"
    )


def model_cell(model: str, field: str) -> str:
    """A JS expression: the text of ``field`` in ``model``'s row of the models table ('' until it exists)."""
    return f"((document.querySelector('#models tr[data-model=\"{model}\"] [data-field=\"{field}\"]') || {{}}).textContent || '')"


def send_traffic(url: str, n: int, stop: threading.Event | None = None) -> None:
    """Up to ``n`` requests one after another (until ``stop``); failures (a hub killed mid-way) are let be."""
    for _ in range(n):
        if stop is not None and stop.is_set():
            return
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/digits/infer", data=BODY), timeout=10):
                pass
        except OSError:
            pass


def test_dashboard_shows_every_hub_a_drain_and_a_killed_hub(
    two_hubs: tuple[Hub, Hub], tmp_path: Path, browser: Browser
):
    west, east = two_hubs
    config = {
        "hubs": [
            hub_entry(west, region="west", price_per_1k=0.02, carbon_g_per_kwh=120,
                      tariff=[{"from": "00:00", "to": "23:59", "price_per_1k": 0.035}]),
            hub_entry(east, region="east", price_per_1k=0.03, carbon_g_per_kwh=450),
        ],
        "health": {"probe_interval_s": 0.5},
        "routing": {"default_policy": "balanced"},
    }  # fmt: skip
    gateway = GatewayProcess(tmp_path, config).start()
    stop = threading.Event()  # live traffic while the page watches: rates and windowed quantiles
    traffic = threading.Thread(target=send_traffic, args=(gateway.url, 5000, stop), daemon=True)
    try:
        send_traffic(gateway.url, 40)
        traffic.start()
        opened = browser.command("open", url=f"{gateway.url}/dashboard")
        assert opened["ok"], opened
        for hub in ("west-1", "east-1"):
            listed = browser.wait(f"{cell(hub, 'health')} === 'ready'", 10_000)
            assert listed["ok"], f"{hub} never listed as ready: {listed}"
        refreshed = browser.wait("Number(document.body.dataset.refreshes || 0) >= 2", 10_000)
        assert refreshed["ok"], (refreshed, browser.command("eval", js="document.getElementById('state').textContent"))
        assert browser.command("eval", js=cell("west-1", "region"))["value"] == "west"
        rate, p99 = model_cell("digits", "rate"), model_cell("digits", "p99")  # parsed from /metrics in the page
        live = browser.wait(f"Number({rate}) > 0 && / ms/.test({p99})", 10_000)
        assert live["ok"], f"digits shows no request rate or p99: {live}"
        assert browser.wait("document.querySelectorAll('#decisions tbody tr td').length > 1", 5_000)["ok"]

        drain = urllib.request.Request(f"{gateway.url}/admin/hubs/east-1/drain", method="POST")
        with urllib.request.urlopen(drain, timeout=10) as reply:
            assert reply.status == 200
        shown = browser.wait(f"{cell('east-1', 'draining')} === 'draining'", SHOWN_WITHIN_MS)
        assert shown["ok"], f"the drain of east-1 was not shown within {SHOWN_WITHIN_MS} ms: {shown}"

        west.kill()
        shown = browser.wait(f"{cell('west-1', 'health')} === 'down'", SHOWN_WITHIN_MS)
        assert shown["ok"], f"the killed hub west-1 was not shown down within {SHOWN_WITHIN_MS} ms: {shown}"

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.command("screenshot", path=str(SCREENSHOT))["ok"]
        problems = browser.command("problems")["value"]
        assert problems == [], problems
    finally:
        stop.set()
        if traffic.is_alive():
            traffic.join(timeout=15)
        gateway.stop()
