"""The alert rules and the Grafana dashboard against a real Prometheus (Debian's ``prometheus``).

``promtool check rules`` and ``promtool test rules`` (a unit test per alert, in
``deploy/prometheus/railgate-rules.test.yml``); then a real Prometheus scrapes a live gateway in
front of a real hub, with traffic that answers 200, 504 (a budget of 0) and 403 (a tenant asking
for a region outside its residency), loads the rules, and every dashboard query and every rule's
expression is evaluated through its HTTP API: none errs, and each returns series wherever this
traffic makes them exist.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.procs import Child, free_port
from gateway.tenants import hash_key, new_key
from hub.server import Hub
from tests.conftest import GatewayProcess, hub_entry
from tests.sysdeps import ROOT, binary

pytestmark = pytest.mark.hub

RULES = ROOT / "deploy" / "prometheus" / "railgate-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "railgate-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "railgate.json"
# Grafana's variables, as a person looking at every gateway over the last minutes would have them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
# Series that only a failure this test does not cause creates (a hub failing, ejected, retried, a
# hedge, a shed request); their queries must still evaluate. PENDING: metrics an alert names before they exist.
NEEDS_FAILURES = ("railgate_hub_failures_total", "railgate_hub_ejections_total", "railgate_retries_total",
                  "railgate_hedges_total", "railgate_shed_total")  # fmt: skip
PENDING: tuple[str, ...] = ()
# What this test's traffic (a third of it 504, some 403) makes each alert's expression return.
FIRING = {
    "RailgateDeadlineMissBudgetBurnFast": True,
    "RailgateDeadlineMissBudgetBurnSlow": True,
    "RailgateResidencyRefusals": True,
    "RailgateHubEjected": False,
    "RailgateQueueNearFull": False,
    "RailgateUsageLedgerLag": False,
    "RailgateGatewayNotReady": False,
}
KEY = new_key()
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [1.0] * 128}]}).encode()


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and target, PromQL) for every target of every panel, Grafana's variables filled in."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def signals(expr: str) -> list[str]:
    """The left side of each compared branch of an alert (``X > 0.8 or Y == 2`` -> ``X``, ``Y``)."""
    branches = re.split(r"\n\s*(?:or|and|unless)\s*\n", expr.strip())
    compared = re.compile(r"^(.*?)\s*(?:==|!=|>=|<=|>|<)\s*\(?[\d.\s*]+\)?$", re.S)
    return [m.group(1) if (m := compared.match(b.strip())) else b.strip() for b in branches]


# -- promtool ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool", "prometheus")


def test_rules_pass_promtool_check(promtool: str):
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_and_they_pass(promtool: str):
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = {
        t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}; tests of no alert: {tested - alerts}"
    assert alerts == set(FIRING), "FIRING (in this test) names every alert"
    done = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# -- a live gateway scraped by a real Prometheus ------------------------------------------------


class Prometheus:
    """``prometheus`` as a child over ``config``, on a free loopback port; queried over its HTTP API."""

    def __init__(self, binary_path: str, workdir: Path, config: dict[str, Any]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        args = [binary_path, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
        self.child = Child(args, "prometheus", ready_url=f"{self.url}/-/ready")

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with {"status": "error", ...}
            return json.loads(exc.read())

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def series(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def wait_for_series(self, expr: str, timeout_s: float = 60.0) -> None:
        self.child.wait_until(lambda: bool(self.series(expr)), timeout_s, f"series for {expr}")


def infer(gateway: GatewayProcess, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{gateway.url}/v2/models/digits/infer", data=BODY,
                                     headers={"Authorization": f"Bearer {KEY}", **headers})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def traffic(gateway: GatewayProcess) -> None:
    """Answers 200, 504 (a budget of 0 ms) and 403 (a region outside the tenant's residency)."""
    statuses = [infer(gateway, {}) for _ in range(8)]
    statuses += [infer(gateway, {"X-Latency-Budget-Ms": "0"}) for _ in range(4)]
    statuses += [infer(gateway, {"X-Allowed-Regions": "east"}) for _ in range(2)]
    assert statuses == [200] * 8 + [504] * 4 + [403] * 2, statuses


@pytest.fixture(scope="module")
def prometheus(hub: Hub, tmp_path_factory) -> Iterator[Prometheus]:
    binary_path = binary("prometheus", "prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "hubs": [hub_entry(hub)],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5},
        "admission": {"refuse_predicted_misses": False},  # a budget of 0 is then a 504, not a 503
        "tenants": [{"name": "west-only", "keys": [hash_key(KEY)], "regions": ["west"]}],
    }
    gateway = GatewayProcess(workdir, config).start()
    prom = Prometheus(binary_path, workdir, {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "railgate", "static_configs": [{"targets": [gateway.address]}]}],
    })  # fmt: skip
    try:
        prom.child.start(timeout_s=60)
        traffic(gateway)  # creates every series the traffic makes ...
        prom.wait_for_series('railgate_requests_total{status="403"}')
        traffic(gateway)  # ... and moves them between two scrapes, so rate() has an increase to see
        prom.wait_for_series('increase(railgate_requests_total{status="403"}[1m]) > 0')
        prom.wait_for_series("railgate:deadline_miss_ratio:rate5m > 0")  # the rules ran on it
        yield prom
    finally:
        prom.child.stop()
        gateway.stop()


def test_prometheus_loads_the_rules_and_evaluates_each_without_error(prometheus: Prometheus):
    def evaluated() -> bool:
        loaded = [r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]
        return len(loaded) == len(rules()) and all(not r["lastEvaluation"].startswith("0001") for r in loaded)

    prometheus.child.wait_until(evaluated, 30, "every rule evaluated once")
    loaded = [r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded} == {r.get("alert") or r["record"] for r in rules()}
    assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_every_rule_expression_evaluates_and_has_series(prometheus: Prometheus, rule: dict[str, Any]):
    result = prometheus.series(rule["expr"])  # asserts status success
    if "record" in rule:
        assert result, f"recording rule {rule['record']} returned no series: {rule['expr']}"
        return
    assert bool(result) == FIRING[rule["alert"]], f"{rule['alert']}: {result}"
    for signal in signals(rule["expr"]):
        if any(name in signal for name in PENDING):
            assert prometheus.series(signal) == [], f"{signal} exists now: it is pending no more, say so in the rules"
        elif not any(name in signal for name in NEEDS_FAILURES):
            assert prometheus.series(signal), f"{rule['alert']}: {signal} returned no series"


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_every_dashboard_query_evaluates_and_has_series(prometheus: Prometheus, title: str, expr: str):
    result = prometheus.series(expr)  # asserts status success
    if not any(name in expr for name in NEEDS_FAILURES):
        assert result, f"panel {title!r} shows nothing: {expr}"


def test_the_dashboard_variable_lists_the_gateway(prometheus: Prometheus):
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
    answer = prometheus.api(f"label/{label}/values", **{"match[]": metric})
    assert answer["status"] == "success" and len(answer["data"]) == 1, answer
