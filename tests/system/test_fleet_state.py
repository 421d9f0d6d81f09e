"""Live gateways and a real redis-server: the ledger under SIGKILL, a Redis restart mid-load, refusal.

Every call a client saw answered (200) must be billed, once: counted by request id in the ledger, or
against ``/v1/usage``. Load loops are bounded in count and time; waits are on conditions with timeouts.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.state.ledger import read_rows
from gateway.tenants import hash_key, new_key
from tests.conftest import GatewayProcess

KEY, ADMIN = new_key(), new_key()


def config(state: dict, **tenant) -> dict:
    return {
        "local": {"enabled": True},
        "admin_keys": [hash_key(ADMIN)],
        "tenants": [{"name": "acme", "keys": [hash_key(KEY)], **tenant}],
        "state": state,
    }


def body(request_id: str) -> bytes:
    return json.dumps(
        {"id": request_id, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    ).encode()


class Load:
    """``clients`` threads calling ``targets`` in turn with unique request ids, until stopped or ``most`` s."""

    def __init__(self, targets: list[GatewayProcess], clients: int = 6, most_s: float = 60.0) -> None:
        self.targets = targets
        self.answered: list[str] = []  # ids of the calls answered 200
        self.statuses: dict[int, int] = {}
        self.messages: dict[int, str] = {}
        self.errors = 0  # connection failures (a killed gateway)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + most_s
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, i: int) -> None:
        n = 0
        conns: dict[int, http.client.HTTPConnection] = {}
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            n += 1
            gw = self.targets[(i + n) % len(self.targets)]
            conn = conns.get(gw.port) or http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conns[gw.port] = conn
            request_id = f"c{i}-{n}"
            try:
                conn.request("POST", "/v2/models/digits/infer", body(request_id),
                             {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
                reply = conn.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conns.pop(gw.port, None)
                with self._lock:
                    self.errors += 1
                self._stop.wait(0.01)  # a dead gateway refuses at once: do not spin
                continue
            with self._lock:
                self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
                if reply.status == 200:
                    self.answered.append(request_id)
                else:
                    self.messages[reply.status] = json.loads(data or b"{}").get("error", "")
        for conn in conns.values():
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.answered)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def usage(gw: GatewayProcess) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", "/v1/usage", headers={"Authorization": f"Bearer {ADMIN}"})
        return json.loads(conn.getresponse().read())["acme"]
    finally:
        conn.close()


def test_sigkill_under_load_loses_no_answered_row_and_a_restart_resumes(repository, tmp_path: Path):
    data_dir = tmp_path / "state"
    gw = GatewayProcess(tmp_path, config({"data_dir": str(data_dir)})).start()
    try:
        with Load([gw]) as load:
            wait_for(lambda: load.count() >= 300, 60, "300 answered calls")
            gw.child.kill()  # SIGKILL, mid-load: no drain, no close
            load.stop()
    finally:
        gw.stop()
    billed = {row.request_id for row in read_rows(data_dir / "ledger.sqlite3")}
    missing = set(load.answered) - billed
    assert not missing, f"{len(missing)} answered calls are not in the ledger, e.g. {sorted(missing)[:3]}"
    again = GatewayProcess(tmp_path, config({"data_dir": str(data_dir)})).start()
    try:
        assert usage(again)["requests"] == len(billed)  # the counters resume from the ledger
    finally:
        again.stop()


def test_sigkill_under_load_with_redis_loses_no_answered_row(repository, redis_server, tmp_path: Path):
    from gateway.state.redis_store import ledger_rows

    gw = GatewayProcess(tmp_path, config({"redis_url": redis_server.url})).start()
    try:
        with Load([gw]) as load:
            wait_for(lambda: load.count() >= 300, 60, "300 answered calls")
            gw.child.kill()
            load.stop()
    finally:
        gw.stop()
    billed = {row.request_id for row in ledger_rows(redis_server.url)}
    missing = set(load.answered) - billed
    assert not missing, f"{len(missing)} answered calls are not in Redis's ledger, e.g. {sorted(missing)[:3]}"


def test_redis_restarted_mid_load_loses_nothing_and_counts_nothing_twice(repository, redis_server, tmp_path: Path):
    states = [{"redis_url": redis_server.url, "data_dir": str(tmp_path / f"s{i}"), "heartbeat_s": 0.2} for i in (0, 1)]
    gws = [GatewayProcess(tmp_path, config(state)).start() for state in states]
    try:
        with Load(gws) as load:
            wait_for(lambda: load.count() >= 100, 60, "100 answered calls with Redis up")
            redis_server.stop()
            down_from = load.count()
            wait_for(lambda: load.count() >= down_from + 100, 60, "100 calls answered while Redis is down")
            redis_server.start()
            up_from = load.count()
            wait_for(lambda: load.count() >= up_from + 100, 60, "100 calls answered after Redis is back")
            load.stop()
        seen = load.count()
        wait_for(lambda: all(usage(g)["requests"] == seen for g in gws), 30,
                 f"both gateways' /v1/usage to show the {seen} answered calls")  # fmt: skip
    finally:
        for g in gws:
            g.stop()
    assert load.statuses.get(200) == seen


def test_with_on_outage_refuse_redis_down_is_a_503_naming_the_outage(repository, redis_server, tmp_path: Path):
    state = {"redis_url": redis_server.url, "on_outage": "refuse", "heartbeat_s": 0.2, "lease_s": 0.01}
    gw = GatewayProcess(tmp_path, config(state, rate_per_s=1000)).start()
    try:
        with Load([gw], clients=2) as load:
            wait_for(lambda: load.count() >= 20, 60, "20 answered calls with Redis up")
            redis_server.stop()
            wait_for(lambda: 503 in load.statuses, 30, "a 503 once Redis is down")
            load.stop()
    finally:
        gw.stop()
    assert "Redis at redis://127.0.0.1" in load.messages[503] and "state.on_outage is refuse" in load.messages[503]


def test_a_second_gateway_on_the_same_ledger_stops_at_start_up_naming_it(repository, tmp_path: Path):
    from devtools.devstack import StartError

    data_dir = tmp_path / "state"
    first = GatewayProcess(tmp_path, config({"data_dir": str(data_dir)})).start()
    try:
        with pytest.raises(StartError, match=r"ledger\.sqlite3 is in use by another gateway process"):
            GatewayProcess(tmp_path, config({"data_dir": str(data_dir)})).start()
    finally:
        first.stop()


def _hammer_two_workers(gw: GatewayProcess) -> tuple[Load, dict]:
    """``gw`` with ``--workers 2`` under 4 clients until 50 calls were refused; its load and /v1/usage."""
    gw.child.args += ["--workers", "2"]
    gw.start()
    try:
        with Load([gw], clients=4, most_s=60) as load:
            wait_for(lambda: load.statuses.get(429, 0) >= 50, 60, "50 calls refused (429)")
            load.stop()
        return load, usage(gw)
    finally:
        gw.stop()


def test_workers_on_redis_share_one_burst(repository, redis_server, tmp_path: Path):
    gw = GatewayProcess(tmp_path, config({"redis_url": redis_server.url}, rate_per_s=0.001, burst=30))
    load, fleet = _hammer_two_workers(gw)
    assert load.statuses[200] <= 30 and load.statuses[200] >= 30 - 2  # one burst, less what a lease left unspent
    assert fleet["requests"] == load.statuses[200]


def test_workers_without_redis_share_one_burst_through_the_ledger(repository, tmp_path: Path):
    data_dir = tmp_path / "state"
    gw = GatewayProcess(tmp_path, config({"data_dir": str(data_dir)}, rate_per_s=0.001, burst=30))
    load, fleet = _hammer_two_workers(gw)
    assert 30 - 2 <= load.statuses[200] <= 30  # one burst, less what a lease left unspent
    assert fleet["requests"] == load.statuses[200]
    assert {r.request_id for r in read_rows(data_dir / "ledger.sqlite3")} == set(load.answered)
