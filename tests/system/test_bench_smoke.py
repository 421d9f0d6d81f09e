"""Smoke tests of the benchmark tooling: its pure parts on synthetic numbers, and the load generator
against a tiny local aiohttp server. The benchmark itself (real hub, gateway, nginx) is never run here."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

import msgpack
import numpy as np
import pytest
from aiohttp import web

from bench import report
from bench.load import HEADER_LENGTH, LoadSpec, Watch, encode_request, generate
from bench.scenarios import Plan
from bench.stats import latency_summary, percentile, spread
from devtools import procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_percentiles_and_spreads_match_numpy_conventions():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    summary = latency_summary(values)
    assert summary["count"] == 100 and summary["max_ms"] == 100.0 and summary["p50_ms"] == pytest.approx(50.5)
    s = spread([3.0, None, 1.0, math.nan, 2.0])
    assert s is not None
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 3.0, 3)
    assert spread([None]) is None


def _run(p50: float, p99: float, rps: float, **extra) -> dict:
    return {"ok": 100, "errors": 0, "error_kinds": {}, "p50_ms": p50, "p99_ms": p99, "throughput_rps": rps, **extra}


def _synthetic_report() -> dict:
    overhead = {
        "cases": [
            {"path": "direct", "concurrency": 1, "client": "tc", "runs": [_run(4.0, 5.0, 250), _run(4.2, 5.5, 240)]},
            {
                "path": "gateway",
                "concurrency": 1,
                "client": "tc",
                "runs": [_run(4.5, 9.5, 220, mean_batch_rows=1.0), _run(4.9, 9.0, 200, mean_batch_rows=2.0)],
            },
        ]
    }
    batching = {
        "cases": [
            {
                "path": "direct",
                "concurrency": 256,
                "runs": [_run(150, 300, 1000, cpu_s={"link": 1.0}, system_cpu_us_per_inference=300.0)],
            },
            {
                "path": "gateway",
                "concurrency": 256,
                "runs": [_run(60, 120, 4000, cpu_s={"gateway": 2.0}, system_cpu_us_per_inference=100.0)],
            },
        ]
    }
    cost = {
        "cases": [
            {
                "encoding": "json",
                "concurrency": 64,
                "runs": [_run(20, 40, 3000, cpu_s={"gateway": 5.0}, cpu_window_s=10.0, requests_per_gateway_cpu_s=600)],
            },
            {
                "server": "bare aiohttp+uvloop echo",
                "encoding": "binary",
                "concurrency": 64,
                "runs": [_run(5, 9, 9000, cpu_s={"gateway": 0.1}, cpu_window_s=10.0, requests_per_gateway_cpu_s=1000)],
            },
        ]
    }
    return {
        "started": "2025-01-01 00:00:00 UTC",
        "plan": Plan.make(runs=2, quick=True).as_dict(),
        "machine": {"cores": 2, "python": "3.11"},
        "notes": ["synthetic"],
        "sections": {"overhead": overhead, "batching": batching, "cost": cost},
    }


def test_targets_and_markdown_from_synthetic_figures(tmp_path):
    rep = _synthetic_report()
    verdicts = {t.goal: t.met for t in report.all_targets(rep)}
    assert verdicts == {
        "gateway p50 adds ≤ 0.4 ms vs direct, c=1": False,  # +0.5 and +0.7 ms
        "gateway p99 adds ≤ 1 ms vs direct, c=1": False,  # +4.5 and +3.5 ms
        "gateway CPU ≤ 300 µs per request, c=1": None,  # no CPU figures in the synthetic runs
        "gateway req/s ≥ 1.5x direct at equal or better p99": True,  # 4x at 120 vs 300 ms
        "gateway + hub CPU per inference ≤ 0.5x direct's hub CPU per inference": True,  # 100 vs 300 µs
        "gateway CPU ≤ 120 µs per request, json, c=64": False,  # 5 CPU-s for 100 requests
        "req per gateway CPU-s ≥ 0.5x the bare echo server's, json, c=64": True,  # 600 vs 1000
    }
    busy = {"machine_busy_cores": 1.5, "cpu_window_s": 2.0, "cpu_s": {"gateway": 1.0, "hub": None}}
    assert report.other_cores(busy) == pytest.approx(1.0)  # 1.5 cores busy, 0.5 of them ours
    broken = {"machine_busy_cores": 237.8, "cpu_window_s": 4.2e-05, "cpu_s": {"hub": 0.0}, "ok": 0, "errors": 64}
    assert report.other_cores(broken) is None  # a run the hub broke at once has no load window
    text = report.markdown(rep)
    assert "## 1. Overhead" in text and "## 2. Batching gain" in text and "## 3. Cost" in text
    assert "+0.60 [+0.50, +0.70]" in text  # the paired p50 difference: median [min, max]
    assert "**missed**" in text and "QUICK run" in text
    overhead = report.overhead_markdown(rep["sections"]["overhead"])
    header = [c.strip() for c in overhead[0].strip("|").split("|")]
    gateway_row = next([c.strip() for c in line.strip("|").split("|")] for line in overhead if "| gateway |" in line)
    assert gateway_row[header.index("mean batch")] == "1.5 [1.0, 2.0]"  # rows per batch the gateway sent, per run
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")
    folder = report.write_report(rep, tmp_path, "stamp")
    saved = json.loads((folder / "bench.json").read_text())
    assert saved["sections"]["overhead"]["cases"][0]["summary"]["p50_ms"]["median"] == pytest.approx(4.1)
    assert (tmp_path / "latest" / "bench.md").read_text() == (folder / "bench.md").read_text()


async def _infer(request: web.Request) -> web.Response:
    """A stand-in v2 server: answers each encoding the way Triton (and the gateway) would."""
    if request.match_info["model"] != "digits":
        return web.json_response({"error": "unknown model"}, status=404)
    body = await request.read()
    outputs: list[dict[str, object]] = [{"name": "label", "datatype": "INT64", "shape": [1, 1]}]
    if request.content_type == "application/msgpack":
        assert msgpack.unpackb(body)["inputs"][0]["data"]
        reply = msgpack.packb({"outputs": [{**outputs[0], "data": b"\0" * 8}]})
        return web.Response(body=reply, content_type="application/msgpack")
    if HEADER_LENGTH in request.headers:
        outputs[0]["parameters"] = {"binary_data_size": 8}
        head = json.dumps({"outputs": outputs}).encode()
        return web.Response(body=head + b"\0" * 8, headers={HEADER_LENGTH: str(len(head))})
    assert len(json.loads(body)["inputs"][0]["data"]) == 64
    return web.json_response({"outputs": [{**outputs[0], "data": [0]}]})


@pytest.fixture
async def tiny_server():
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", _infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_load_generator_reports_well_formed_results(tiny_server):
    for encoding in ("binary", "json", "msgpack"):
        body, headers = encode_request(encoding, "pixels", np.zeros((1, 64), "float32"))
        assert body and "Content-Type" in headers
        result = await generate(
            LoadSpec(url=tiny_server, encoding=encoding, concurrency=4, requests=40, warmup_requests=8)
        )
        assert (result["ok"], result["errors"], result["aborted"]) == (40, 0, False), result["error_kinds"]
        assert len(result["latencies_ms"]) == 40 and result["throughput_rps"] > 0
        assert result["summary"]["p50_ms"] <= result["summary"]["p99_ms"]

    timed = await generate(
        LoadSpec(
            url=tiny_server,
            concurrency=2,
            duration_s=0.4,
            warmup_s=0.1,
            watch=(Watch("self", os.getpid()),),
        )
    )
    assert timed["ok"] > 0 and timed["elapsed_s"] == pytest.approx(0.4)
    assert timed["cpu_s"]["self"] is not None and timed["cpu_s"]["loadgen"] >= 0
    assert timed["cpu_window_s"] == pytest.approx(0.4, abs=0.1)

    missing = await generate(LoadSpec(url=tiny_server, model="nope", concurrency=2, requests=6))
    assert (missing["ok"], missing["errors"], missing["error_kinds"]) == (0, 6, {"http_404": 6})
    json.dumps(missing)  # the document the CLI prints


async def test_load_generator_cli_prints_one_json_document(tiny_server):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "--url", tiny_server, "--encoding", "msgpack",
        "--concurrency", "2", "--requests", "10", "--max-seconds", "20",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **procs.child_options(),
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["ok"] == 10 and result["spec"]["encoding"] == "msgpack"


def test_the_tls_table_gives_what_tls_adds_paired_run_by_run():
    def case(protocol: str, path: str, p50s: list[float]) -> dict:
        return {"protocol": protocol, "path": path, "concurrency": 16, "client": "x",
                "runs": [_run(p50, p50 * 2, 1000) for p50 in p50s]}  # fmt: skip

    section = {"cases": [case("http", "plain", [2.0, 3.0]), case("http", "tls", [2.3, 3.5])]}
    rows = [line for line in report.tls_markdown(section) if line.startswith("| http")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:5] == ["http", "16", "2.50 [2.00, 3.00]", "2.90 [2.30, 3.50]", "+0.40 [+0.30, +0.50]"]


def test_the_python_floor_forwards_to_a_real_hub_and_answers_as_the_hub_does(hub):
    """The overhead section's floor row is only a floor if it does the forwarding for real: tritonclient
    through it gets the hub's own metadata and outputs, binary and JSON."""
    import tritonclient.http as triton_http

    from bench.scenarios import start_forward_floor

    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
    answers = []
    with start_forward_floor(hub.http_url) as floor:
        assert floor.ready_match is not None
        for url in (f"127.0.0.1:{floor.ready_match.group(1)}", f"127.0.0.1:{hub.config.http_port}"):
            client = triton_http.InferenceServerClient(url)
            try:
                answers.append(client.get_model_metadata("digits")["outputs"])
                for binary in (True, False):
                    tensor = triton_http.InferInput("pixels", [1, 64], "FP32")
                    tensor.set_data_from_numpy(pixels, binary_data=binary)
                    wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=binary)]
                    answers.append(client.infer("digits", [tensor], outputs=wanted).as_numpy("probabilities"))
            finally:
                client.close()
    through_floor, direct = answers[:3], answers[3:]
    assert through_floor[0] == direct[0], "the model's metadata, as tritonclient asks for it first"
    for got, expected in zip(through_floor[1:], direct[1:], strict=True):
        np.testing.assert_array_equal(got, expected)


def test_the_grpc_floor_answers_tritonclient_as_the_hub_does_unary_and_streamed(hub):
    """The gRPC section's floor row stands for a gRPC front only if tritonclient.grpc works against
    it as against the hub: the model's metadata, each call's outputs (names, datatypes, shapes), and a
    stream's answers carrying their own request ids."""
    import queue

    import tritonclient.grpc as triton_grpc

    from bench.scenarios import start_grpc_echo

    def ask(address: str) -> tuple[object, list[tuple[str, str, list[int]]], list[str]]:
        client = triton_grpc.InferenceServerClient(address)
        try:
            inputs = client.get_model_metadata("digits", as_json=True)["inputs"]
            tensor = triton_grpc.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
            result = client.infer("digits", [tensor]).get_response(as_json=True)
            outputs = sorted((o["name"], o["datatype"], [int(d) for d in o["shape"]]) for o in result["outputs"])
            answers: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for request_id in ("a", "b", "c"):
                client.async_stream_infer("digits", [tensor], request_id=request_id)
            ids = []
            for _ in range(3):
                result, error = answers.get(timeout=10)
                assert error is None, error
                ids.append(result.get_response().id)
            client.stop_stream()
            return inputs, outputs, sorted(ids)
        finally:
            client.close()

    with start_grpc_echo() as echo:
        assert echo.ready_match is not None
        through_floor = ask(f"127.0.0.1:{echo.ready_match.group(1)}")
    direct = ask(f"127.0.0.1:{hub.config.grpc_port}")
    assert through_floor == direct
    assert through_floor[2] == ["a", "b", "c"]


def test_the_grpc_forward_floor_answers_each_call_with_the_hubs_own_outputs(hub):
    """The forward floor row stands for a grpc.aio front that calls the hub per request only if it does
    call it: tritonclient.grpc gets the hub's very outputs for each input (values, not only shapes), for
    the model the call names, and an error the hub gives comes back as the call's."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    from bench.scenarios import start_grpc_echo

    rng = np.random.default_rng(7)
    rows = [rng.uniform(0.0, 16.0, (1, 64)).astype(np.float32) for _ in range(3)]

    def ask(address: str) -> list[dict[str, np.ndarray]]:
        client = triton_grpc.InferenceServerClient(address)
        try:
            answers = []
            for pixels in rows:
                tensor = triton_grpc.InferInput("pixels", [1, 64], "FP32")
                tensor.set_data_from_numpy(pixels)
                result = client.infer("digits", [tensor])
                answers.append({name: result.as_numpy(name) for name in ("label", "probabilities")})
            return answers
        finally:
            client.close()

    with start_grpc_echo(hub.http_url) as forward:
        assert forward.ready_match is not None
        address = f"127.0.0.1:{forward.ready_match.group(1)}"
        through_floor = ask(address)
        client = triton_grpc.InferenceServerClient(address)
        try:
            tensor = triton_grpc.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(rows[0])
            with pytest.raises(InferenceServerException, match="404"):
                client.infer("no-such-model", [tensor])
        finally:
            client.close()
    direct = ask(f"127.0.0.1:{hub.config.grpc_port}")
    assert not np.array_equal(direct[0]["probabilities"], direct[1]["probabilities"]), "inputs that tell answers apart"
    for got, expected in zip(through_floor, direct, strict=True):
        for name in ("label", "probabilities"):
            assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape
            np.testing.assert_array_equal(got[name], expected[name])


def test_the_grpc_front_is_compared_with_the_grpc_floor_on_its_stream_row_paired_run_by_run():
    def case(path: str, name: str, cpu_s: list[float]) -> dict:
        runs = [_run(5, 9, 1000, cpu_s={name: c}) for c in cpu_s]  # 100 answered per run
        return {"path": path, "concurrency": 64, "stream": True, "runs": runs}

    section = {"cases": [case("gateway", "gateway", [0.03, 0.02]), case("grpc floor", "grpc floor", [0.01, 0.012])]}
    (target,) = report.grpc_floor_targets(section)
    assert target.goal == "req per gateway CPU-s ≥ 0.5x the bare grpc.aio echo server's, stream, 64 in flight"
    assert target.figure == "0.47x [0.33, 0.60]"  # 0.01 / 0.03 and 0.012 / 0.02, run by run
    assert target.met is False
    section["cases"][0]["runs"][0]["cpu_s"]["gateway"] = 0.015  # run 1 now 0.67x: median 0.63x
    assert report.grpc_floor_targets(section)[0].met is True
    assert report.grpc_floor_targets({"cases": section["cases"][1:]}) == []  # no gateway stream row: no target
