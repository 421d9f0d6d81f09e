"""The tracing rows of ``make bench``: what OpenTelemetry tracing adds to the gateway, off vs 1% vs 100%.

Three gateways in front of the same hub, alike but for ``tracing:`` (off; ``sample_ratio`` 0.01;
1.0), the traced two exporting over OTLP/HTTP to a real receiver on loopback (devtools/otlp.py, in
this process). Per run, paths interleaved: c=1 sequential calls (tritonclient.http sync) and a
c=16 closed loop (bench.load). Added p50 and added gateway CPU per request are each traced case
minus the untraced one, paired run by run; the spans the receiver got say the export really ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from bench.load import LoadSpec, Watch
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
            for concurrency in (1, c):
                for name, gateway in gateways.items():
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
        section["bad_otlp_posts"] = list(receiver.bad_posts)
