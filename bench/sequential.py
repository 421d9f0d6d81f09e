"""Concurrency-1 latencies through the unmodified Triton client (tritonclient.http, sync, binary tensors)."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import numpy as np

from bench.load import Watch, cpu_sample
from bench.stats import latency_summary


def sequential_tritonclient(
    url: str,
    model: str,
    requests: int,
    warmup: int,
    *,
    shape: tuple[int, ...] = (1, 64),
    watch: tuple[Watch, ...] = (),
    max_s: float = 300.0,
) -> dict[str, Any]:
    """Latencies of ``requests`` sequential calls (after ``warmup``) with tritonclient.http's sync client.

    Concurrency 1 as an application would do it: the unmodified Triton client, binary tensors in
    and out (``binary_data=True``), one keep-alive connection. Runs in the calling process, whose
    CPU is reported as ``loadgen``.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10, network_timeout=10)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    cpu_start, t_start = cpu_sample(watch), time.perf_counter()  # taken again once the warm-up is over
    try:
        metadata = client.get_model_metadata(model)
        tensor = httpclient.InferInput(metadata["inputs"][0]["name"], list(shape), "FP32")
        data = np.random.default_rng(0).uniform(0.0, 16.0, size=shape).astype(np.float32)
        tensor.set_data_from_numpy(data, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=True) for o in metadata["outputs"]]
        stop_at = time.perf_counter() + max_s
        for i in range(warmup + requests):
            if i == warmup:
                cpu_start, t_start = cpu_sample(watch), time.perf_counter()
            if time.perf_counter() > stop_at:
                errors["run_bound"] += warmup + requests - i
                break
            t0 = time.perf_counter()
            try:
                client.infer(model, [tensor], outputs=outputs)
            except InferenceServerException as exc:
                if i >= warmup:
                    errors[f"infer: {exc.status() or 'error'}"] += 1
                continue
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1000)
        cpu_end, elapsed = cpu_sample(watch), time.perf_counter() - t_start
    finally:
        client.close()
    cpu_s: dict[str, float] = {}
    for name, after in cpu_end.items():
        before = cpu_start.get(name)
        if after is not None and before is not None:
            cpu_s[name] = after - before
    busy = cpu_s.pop("_machine_busy", None)
    return {
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "elapsed_s": elapsed,
        "throughput_rps": len(latencies) / elapsed if elapsed else math.nan,
        "summary": latency_summary(latencies),
        "cpu_s": cpu_s,
        "cpu_window_s": elapsed,
        "machine_busy_cores": busy / elapsed if busy is not None and elapsed else None,
        "aborted": bool(errors.get("run_bound")),
    }
