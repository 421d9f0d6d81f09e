"""A real Triton hub: serves every model, agrees with local ONNX Runtime, stops cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from devtools import procs
from devtools.procs import Child, free_port, group_members
from hub.server import Hub, HubConfig, HubError
from tests.conftest import start_hub
from tests.samples import assert_same_outputs, local_outputs, sample_inputs


@pytest.mark.parametrize("name", ["digits", "vision", "anomaly", "vocab"])
def test_hub_serves_each_model_like_local_onnxruntime_over_http(hub: Hub, repository: Path, name: str) -> None:
    inputs = sample_inputs(name, batch=6)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{hub.config.http_port}")
    assert client.is_model_ready(name)
    tensors = []
    for tensor, array in inputs.items():
        t = httpclient.InferInput(tensor, list(array.shape), "BYTES" if array.dtype.kind == "O" else "FP32")
        t.set_data_from_numpy(array, binary_data=True)
        tensors.append(t)
    result = client.infer(name, tensors)
    want = local_outputs(repository, name, inputs)
    assert_same_outputs({k: result.as_numpy(k) for k in want}, want)


def test_hub_serves_over_grpc_too(hub: Hub, repository: Path) -> None:
    inputs = sample_inputs("digits", batch=5, seed=3)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{hub.config.grpc_port}")
    t = grpcclient.InferInput("pixels", list(inputs["pixels"].shape), "FP32")
    t.set_data_from_numpy(inputs["pixels"])
    result = client.infer("digits", [t])
    want = local_outputs(repository, "digits", inputs)
    assert_same_outputs({k: result.as_numpy(k) for k in want}, want)


def test_hub_takes_batching_from_config_pbtxt(hub: Hub) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{hub.config.http_port}")
    config = client.get_model_config("vision")
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"]["preferred_batch_size"] == [8, 16, 32]
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]


def test_stopping_the_hub_leaves_no_process(repository: Path) -> None:
    h = start_hub(repository, "short-lived")
    assert h.process is not None
    pgid = h.process.pid
    assert group_members(pgid), "tritonserver and its stubs run in the hub's process group"
    h.stop()
    assert group_members(pgid) == []


def test_hub_refuses_a_port_in_use(repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HubError, match=f"127.0.0.1:{port} is already in use"):
            Hub(HubConfig(repository, http_port=port)).start()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return procs.run([sys.executable, "-m", "gateway.cli", "hub", *args], timeout_s=120)


def _broken_repository(tmp_path: Path) -> Path:
    model = tmp_path / "broken"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"")
    (model / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: lots\n')
    return tmp_path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no models"),
        ("broken", "broken config"),
        ("unknown-model", "not in"),
    ],
)
def test_hub_cli_bad_input_is_one_clear_line(tmp_path: Path, repository: Path, case: str, expected: str) -> None:
    args = {
        "missing": lambda: ["--repository", str(tmp_path / "nowhere")],
        "empty": lambda: ["--repository", str(tmp_path)],
        "broken": lambda: ["--repository", str(_broken_repository(tmp_path))],
        "unknown-model": lambda: ["--repository", str(repository), "--models", "digits,nosuch"],
    }[case]()
    result = _run_cli(*args, "--http-port", str(free_port()))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_hub_cli_prints_ready_and_stops_cleanly_on_sigterm(repository: Path) -> None:
    name = f"cli-{os.getpid()}"
    cmd = [sys.executable, "-m", "gateway.cli", "hub", "--repository", str(repository), "--models", "digits"]
    cmd += ["--http-port", str(free_port()), "--name", name]
    with Child(cmd, "railgate hub", ready_line=r"hub \S+ ready .*").start(120) as cli:
        assert cli.ready_match is not None
        line = cli.ready_match.group(0)
        assert f"hub {name} ready" in line and "models=digits" in line
        assert _processes_mentioning(name), "tritonserver runs with the hub's work dir"
        assert cli.stop(timeout_s=60) == 0
        assert _processes_mentioning(name) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_hub_cli_leaves_no_tritonserver_or_stub_behind(repository: Path) -> None:
    """SIGKILL runs no clean-up in ``railgate hub``: the parent-death signal must stop tritonserver,
    and tritonserver its Python-backend stubs (they share its process group)."""
    cmd = [sys.executable, "-m", "gateway.cli", "hub", "--repository", str(repository), "--models", "digits,vocab"]
    cmd += ["--http-port", str(free_port()), "--name", f"sigkill-{os.getpid()}"]
    with Child(cmd, "railgate hub", ready_line=r"hub \S+ ready .*").start(120) as cli:
        servers = _children(cli.pid)
        assert len(servers) == 1, f"railgate hub runs one tritonserver, found {servers}"
        (server,) = servers
        group = group_members(server)  # tritonserver leads its own group, its stubs in it
        assert len(group) >= 3, f"tritonserver and one stub per model, found {group}"
        try:
            assert cli.process is not None
            cli.process.kill()  # the railgate hub process alone, by its own pid
            cli.process.wait(10)
            _wait_until(lambda: group_members(server) == [], "tritonserver and its stubs to exit", 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server, signal.SIGKILL)  # only if the test failed: leave nothing behind


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll ``condition`` (process exits have no event to wait on here) until it holds or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.05)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return [pid for pid in found if pid != os.getpid()]


def test_hub_reports_startup_time(hub: Hub) -> None:
    assert hub.startup_s is not None and hub.startup_s > 0


def test_a_hub_stopped_while_a_client_holds_a_connection_exits_by_itself(repository: Path) -> None:
    """tritonserver's shutdown waits for open HTTP connections, up to its exit timeout: the dev hub's
    is shorter than its own stop's wait, so it exits by itself rather than being SIGKILLed (Triton's
    default 30 s outlasted the 20 s wait, and every test that left a client open paid 20 s)."""
    h = start_hub(repository, "held-open")
    with socket.create_connection(("127.0.0.1", h.config.http_port), timeout=10) as held:
        held.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: hub\r\n\r\n")
        assert held.recv(4096).startswith(b"HTTP/1.1 200"), "a kept-alive connection, now idle"
        status = h.stop()
    assert status is not None and status != -signal.SIGKILL, f"tritonserver was killed (status {status})"
