"""The budget reaches Triton: a model whose queue policy lets a request's ``timeout`` cut its wait
drops a request that is still queued at the hub when its budget runs out, over HTTP and gRPC.

The test model is ``vision`` with a dynamic batcher that holds a lone request for up to 2 s waiting
for a full batch of 32: a request queued there is a request waiting at the hub. Told its budget, the
hub rejects it when the budget runs out (Triton counts a failure, and never runs it); told nothing,
over HTTP it runs it 2 s later for a caller long gone (a success nobody receives). Over gRPC the
gateway's own cancellation at its deadline also takes a queued request out, so the second test
calls the hub clients directly, with a deadline far past the budget they pass on."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from devtools.devstack import Hub
from gateway.backends.triton import hub_backend
from gateway.config import HubSpec
from railcore.errors import DeadlineExceeded
from railcore.repository import parse_config
from tests.conftest import GatewayProcess, hub_entry, start_hub

BUDGET_MS = 400
HUB_HOLDS_S = 2.0


def queue_policy_repository(source: Path, target: Path) -> Path:
    """A copy of ``vision`` whose batcher waits ``HUB_HOLDS_S`` for a full batch and lets a request's
    timeout (under a 60 s default) reject it from the queue."""
    shutil.copytree(source / "vision", target / "vision")
    path = target / "vision" / "config.pbtxt"
    config = parse_config(path)
    batching = config.dynamic_batching
    del batching.preferred_batch_size[:]
    batching.preferred_batch_size.append(32)
    batching.max_queue_delay_microseconds = int(HUB_HOLDS_S * 1e6)
    policy = batching.default_queue_policy
    policy.timeout_action = policy.REJECT
    policy.default_timeout_microseconds = 60_000_000
    policy.allow_timeout_override = True
    path.write_text(text_format.MessageToString(config))
    return target


@pytest.fixture(scope="module")
def queue_hub(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    h = start_hub(queue_policy_repository(repository, tmp_path_factory.mktemp("queue-repo")), "west-q", grpc=True)
    yield h
    h.stop()


def hub_outcomes(hub: Hub) -> tuple[int, int]:
    """Triton's own (success, fail) counts for the model."""
    url = f"http://127.0.0.1:{hub.config.http_port}/v2/models/vision/stats"
    stats = json.loads(urllib.request.urlopen(url, timeout=5).read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["fail"]["count"])


def infer_with_budget(gw: GatewayProcess) -> int:
    pixels = np.zeros((1, 3, 64, 64), np.float32)
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": pixels.ravel().tolist()}]}
    ).encode()
    request = urllib.request.Request(
        f"{gw.url}/v2/models/vision/infer", data=body, headers={"X-Latency-Budget-Ms": str(BUDGET_MS)}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_a_request_whose_budget_runs_out_while_queued_at_the_hub_is_dropped_there(
    queue_hub: Hub, tmp_path: Path, grpc: bool
) -> None:
    config = {
        "hubs": [hub_entry(queue_hub, grpc=grpc)],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5, "warmup": False},  # warm-up batches would wait 2 s each
    }
    gw = GatewayProcess(tmp_path, config).start()
    try:
        before = hub_outcomes(queue_hub)
        assert infer_with_budget(gw) == 504
        # The hub settles the request once: rejected at the budget (fail), or run when its batch
        # times out (success), HUB_HOLDS_S in. Read its counts until one of them moves.
        settle_by = time.monotonic() + HUB_HOLDS_S + 3.0
        after = hub_outcomes(queue_hub)
        while after == before and time.monotonic() < settle_by:
            time.sleep(0.05)  # polling another process's counters; the bound above ends it
            after = hub_outcomes(queue_hub)
        assert (after[0] - before[0], after[1] - before[1]) == (0, 1), "the hub ran it instead of dropping it"
    finally:
        gw.stop()


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_a_hub_client_tells_triton_the_budget_it_is_given(queue_hub: Hub, grpc: bool) -> None:
    """The hub client itself, over a real socket: told 0.3 s under a 30 s deadline, it is answered
    by Triton's rejection at 0.3 s, not by the batch the hub would run HUB_HOLDS_S in."""
    url = hub_entry(queue_hub, grpc=grpc)["url"]
    backend = hub_backend(HubSpec("west-q", url, protocol="grpc" if grpc else "http"))
    await backend.start()
    loop = asyncio.get_running_loop()
    try:
        await backend.discover()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="timeout expired"):
            await backend.infer(
                "vision", "", {"image": np.zeros((1, 3, 64, 64), np.float32)}, ["label"], started + 30, timeout_s=0.3
            )
        assert loop.time() - started < HUB_HOLDS_S
    finally:
        await backend.close()
