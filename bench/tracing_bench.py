"""The tracing rows of ``make bench``: what OpenTelemetry tracing adds to the gateway, off vs 1% vs 100%.

Three gateways in front of the same hub, alike but for ``tracing:`` (off; ``sample_ratio`` 0.01;
1.0), the traced two exporting over OTLP/HTTP to a real receiver on loopback (devtools/otlp.py, in
this process). Per run, the three interleaved (their order turning from run to run): c=1 sequential
calls (tritonclient.http sync) and a c=16 closed loop (bench.load). Added p50 and added gateway CPU per request are each traced case
minus the untraced one, paired run by run; the spans the receiver got say the export really ran.

On a shared machine those differences drown in noise, so the section also measures the tracing code
alone (``hooks``): ``python -m bench.tracing_bench`` runs the gateway's own span calls for one
request in a batch of one (request, queue wait, batch, hub call, traceparent) N times in a process
of its own, exporting to the receiver, and reports its CPU time (all threads, the exporter's
included, flushed at the end) per request. With tracing off none of that code runs at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bench.load import LoadSpec, Watch
from devtools import procs
from devtools.devstack import Gateway, StartError
from devtools.otlp import OtlpReceiver

RATIOS: dict[str, float | None] = {"off": None, "1%": 0.01, "100%": 1.0}


def _service(name: str) -> str:
    return f"bench-tracing-{name.rstrip('%')}pct"


def _gateway(b: Any, hub_url: str, receiver: OtlpReceiver, name: str, ratio: float | None) -> Gateway:
    config: dict[str, Any] = {"hubs": [{"name": "hub", "url": hub_url}], "local": {"enabled": False}}
    if ratio is not None:
        # The SDK's default export delay (5 s): the batches the bench measures are the production shape.
        config["tracing"] = {"otlp_endpoint": receiver.endpoint, "sample_ratio": ratio, "service_name": _service(name)}
    gateway = Gateway(b.workdir, config).start(90)
    if b.plan.model not in gateway.models:
        gateway.stop()
        raise StartError(gateway.child.name, f"does not serve {b.plan.model!r}", f"models={','.join(gateway.models)}")
    return gateway


def hooks_cpu_us(endpoint: str, ratio: float, requests: int) -> float:
    """CPU microseconds per request of the gateway's tracing calls (all threads, export included)."""
    from multidict import CIMultiDict

    from gateway import tracing as spans
    from railcore.tracing import TracingSettings, end_span, headers_for, start_tracing

    tracing = start_tracing(TracingSettings(otlp_endpoint=endpoint, sample_ratio=ratio), "bench-hooks")
    assert tracing is not None
    headers = CIMultiDict({"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "120"})
    hub = SimpleNamespace(backend=SimpleNamespace(name="hub", kind="hub", region="west"), reason="nearest")
    attributes = {"http.request.method": "POST", "url.path": "/v2/models/digits/infer", "railgate.model": "digits"}
    started = time.process_time()
    for i in range(requests):
        if i % 256 == 255:  # faster than any gateway: flushed as it goes, so no span is dropped uncounted
            tracing.provider.force_flush()
        request = spans.request_span(tracing.tracer, headers, "POST /v2/models/{model}/infer", attributes)
        member = SimpleNamespace(item=SimpleNamespace(trace=request, queued_ns=time.time_ns()), rows=1)
        batch = spans.batch_trace(tracing.tracer, "digits", "", [member], 1)  # type: ignore[list-item]
        assert batch is not None
        call = batch.backend_call(hub, "digits", 1)  # type: ignore[arg-type]
        headers_for(call, {"Content-Type": "application/octet-stream"})
        call.set_attribute("http.response.status_code", 200)
        end_span(call)
        batch.end(None)
        request.set_attribute("http.response.status_code", 200)
        request.end()
    tracing.shutdown()  # the last spans are exported: their cost is counted
    return (time.process_time() - started) / requests * 1e6


def _hooks_run(endpoint: str, ratio: float, requests: int) -> float:
    args = [sys.executable, "-m", "bench.tracing_bench", "--endpoint", endpoint, "--ratio", str(ratio),
            "--requests", str(requests)]  # fmt: skip
    done = procs.run(args, timeout_s=300)
    if done.returncode != 0:
        raise RuntimeError(f"bench.tracing_bench exited with {done.returncode}: {done.stderr[-500:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["cpu_us_per_request"])


def tracing_section(
    b: Any,
    section: dict[str, Any],
    runs: Callable[..., list[dict[str, Any]]],
    run_record: Callable[[dict[str, Any]], dict[str, Any]],
    run_load: Callable[[LoadSpec], dict[str, Any]],
    progress: Callable[[Any, str, dict[str, Any]], None],
) -> None:
    from bench.sequential import sequential_tritonclient

    plan = b.plan
    section.update(skipped=[], cases=[])
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(OtlpReceiver())
        gateways = {
            name: stack.enter_context(_gateway(b, b.hub.http_url, receiver, name, r)) for name, r in RATIOS.items()
        }
        hub_watch = Watch("hub", b.hub.pid, group=True)
        c = plan.overhead_concurrency
        for run in range(plan.runs):
            b.say(f"tracing run {run + 1}/{plan.runs}")
            # The order of the three turns each run: drift on a shared machine does not land on one setting.
            order = list(gateways)[run % 3 :] + list(gateways)[: run % 3]
            for concurrency in (1, c):
                for name in order:
                    gateway = gateways[name]
                    watch = (hub_watch, Watch("gateway", gateway.pid))
                    service = _service(name)
                    spans_before = sum(s.service == service for s in receiver.spans())
                    if concurrency == 1:
                        result = sequential_tritonclient(
                            gateway.url, plan.model, plan.sequential_requests, plan.sequential_warmup,
                            shape=plan.shape, watch=watch,
                        )  # fmt: skip
                        client = "tritonclient.http sync, binary_data=True"
                    else:
                        spec = LoadSpec(
                            url=gateway.url, model=plan.model, shape=plan.shape, encoding="binary",
                            concurrency=c, duration_s=plan.overhead_duration_s, warmup_s=plan.overhead_warmup_s,
                            max_s=plan.overhead_warmup_s + plan.overhead_duration_s + 30, watch=watch,
                        )  # fmt: skip
                        result = run_load(spec)
                        client = "bench.load (aiohttp), binary tensors"
                    record = run_record(result)
                    # Spans exported by the time the run ended (the exporter sends every 5 s: a lower bound).
                    record["spans_received"] = sum(s.service == service for s in receiver.spans()) - spans_before
                    runs(section, tracing=name, concurrency=concurrency, client=client).append(record)
                    progress(b, f"c={concurrency} tracing {name}", record)
            requests = 2000 if plan.quick else 20000
            for name, ratio in RATIOS.items():
                if ratio is not None:
                    cpu_us = _hooks_run(receiver.endpoint, ratio, requests)
                    runs(section, tracing=name, concurrency="hooks", client=f"{requests} in-process").append(
                        {"hooks_cpu_us": cpu_us, "requests": requests}
                    )
                    b.say(f"  hooks tracing {name:4s}  {cpu_us:7.1f} us CPU per request (tracing code alone)")
        section["bad_otlp_posts"] = list(receiver.bad_posts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tracing_bench", description="CPU of the tracing code alone")
    p.add_argument("--endpoint", required=True, help="OTLP/HTTP receiver, e.g. http://127.0.0.1:4318")
    p.add_argument("--ratio", type=float, required=True)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args(argv)
    print(json.dumps({"cpu_us_per_request": hooks_cpu_us(args.endpoint, args.ratio, args.requests)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
