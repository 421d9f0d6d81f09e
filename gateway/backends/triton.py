"""Triton hub clients: HTTP with the binary tensor extension (default) or gRPC.

Tensors always travel to the hub as raw bytes, never as JSON numbers. Each hub has one pooled,
keep-alive connection set. The remaining budget goes to Triton as its ``timeout`` parameter and
the call itself never outlives the batch's deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from gateway.backends import Backend
from gateway.config import HubSpec
from railcore.catalog import ModelInfo, build_model_info
from railcore.errors import BadRequest, DeadlineExceeded, HubFailed, RailgateError
from railcore.protocol.binary import decode_outputs, serialize_bytes_tensor
from railcore.protocol.codec import HEADER_LENGTH
from railcore.protocol.types import triton_datatype

log = logging.getLogger("railgate.hub")


def _model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


def _tensor_bytes(array: np.ndarray) -> bytes | memoryview:
    if array.dtype == object:
        return serialize_bytes_tensor(array)
    return memoryview(np.ascontiguousarray(array)).cast("B")  # type: ignore[arg-type]


class TritonHttpBackend(Backend):
    kind = "hub"

    def __init__(self, spec: HubSpec) -> None:
        super().__init__(spec.name, spec.region, spec.price_per_1k, spec.carbon_g_per_kwh, spec.max_inflight)
        self.spec = spec
        self.base_url = spec.url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.spec.max_connections, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            self.base_url,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _get_json(self, path: str, method: str = "GET", timeout_s: float = 5.0) -> Any:
        assert self.session is not None
        url = path if path.startswith("http") else self.base_url + path
        async with asyncio.timeout(timeout_s), self.session.request(method, url) as reply:
            body = await reply.read()
            if reply.status != 200:
                raise HubFailed(f"hub {self.name}: {method} {path} answered {reply.status}: {body[:200]!r}")
            return json.loads(body)

    async def discover(self) -> dict[str, ModelInfo]:
        index = await self._get_json("/v2/repository/index", method="POST")
        names = sorted({e["name"] for e in index if e.get("state", "READY") == "READY"})

        async def read(name: str) -> ModelInfo:
            metadata, config = await asyncio.gather(
                self._get_json(f"/v2/models/{name}"), self._get_json(f"/v2/models/{name}/config")
            )
            return build_model_info(metadata, config)

        # All at once: over a long-haul link each sequential call would cost a round trip.
        infos = await asyncio.gather(*(read(n) for n in names))
        self.models = dict(zip(names, infos, strict=True))
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        assert self.session is not None
        try:
            async with asyncio.timeout(timeout_s), self.session.get(f"{self.base_url}/v2/health/ready") as reply:
                await reply.read()
                return reply.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        stats = await self._get_json("/v2/models/stats")
        return _statistics(stats.get("model_stats", []))

    async def pending_requests(self) -> float | None:
        if not self.spec.metrics_url:
            return None
        assert self.session is not None
        async with asyncio.timeout(2.0), self.session.get(self.spec.metrics_url) as reply:
            text = await reply.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nv_inference_pending_request_count{")
        )

    async def infer(
        self, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float
    ) -> dict[str, np.ndarray]:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before the batch reached hub {self.name}")
        blobs = [_tensor_bytes(a) for a in inputs.values()]
        header = {
            "inputs": [
                {
                    "name": name,
                    "datatype": "BYTES" if a.dtype == object else triton_datatype(a.dtype),
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
                for (name, a), blob in zip(inputs.items(), blobs, strict=True)
            ],
            "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
            "parameters": {"timeout": int(remaining * 1e6)},
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        body = b"".join([head, *blobs])
        headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
        self.inflight += 1
        try:
            async with asyncio.timeout_at(deadline):
                async with self.session.post(
                    f"{_model_path(model, version)}/infer", data=body, headers=headers
                ) as reply:
                    raw = await reply.read()
                    status, length = reply.status, reply.headers.get(HEADER_LENGTH)
        except TimeoutError:
            raise DeadlineExceeded(f"hub {self.name} did not answer {model!r} before the deadline") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise HubFailed(f"hub {self.name} failed: {exc.__class__.__name__}: {exc}") from exc
        finally:
            self.inflight -= 1
        if 400 <= status < 500:  # the request's fault, not the hub's: no failover, no mark against it
            raise BadRequest(f"hub {self.name} refused the request ({status}): {_error_text(raw)}")
        if status != 200:
            raise HubFailed(f"hub {self.name} answered {status}: {_error_text(raw)}")
        try:
            return decode_outputs(raw, int(length) if length is not None else None, outputs)
        except (ValueError, KeyError, TypeError, RailgateError) as exc:
            raise HubFailed(f"hub {self.name} sent an unreadable reply: {exc}") from exc


def _statistics(model_stats: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    """Triton's statistics extension, summed over versions: count, queue ns, compute ns."""
    totals: dict[str, tuple[float, float, float]] = {}
    for entry in model_stats:
        infer = entry.get("inference_stats", {})
        count = float(infer.get("success", {}).get("count", 0))
        queue = float(infer.get("queue", {}).get("ns", 0))
        compute = float(infer.get("compute_infer", {}).get("ns", 0))
        c, q, n = totals.get(entry["name"], (0.0, 0.0, 0.0))
        totals[entry["name"]] = (c + count, q + queue, n + compute)
    return totals


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return repr(raw[:200])


class TritonGrpcBackend(Backend):
    """The same hub over gRPC (``protocol: grpc``): Triton can cancel a gRPC request mid-flight."""

    kind = "hub"

    def __init__(self, spec: HubSpec) -> None:
        super().__init__(spec.name, spec.region, spec.price_per_1k, spec.carbon_g_per_kwh, spec.max_inflight)
        self.spec = spec
        parts = urlsplit(spec.url if "://" in spec.url else f"grpc://{spec.url}")
        self.target = f"{parts.hostname}:{parts.port}"
        self.client: Any = None

    async def start(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.client = grpcclient.InferenceServerClient(self.target)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def discover(self) -> dict[str, ModelInfo]:
        index = await self.client.get_model_repository_index(as_json=True)
        names = sorted({e["name"] for e in index.get("models", []) if e.get("state", "READY") == "READY"})

        async def read(name: str) -> ModelInfo:
            metadata, config = await asyncio.gather(
                self.client.get_model_metadata(name, as_json=True), self.client.get_model_config(name, as_json=True)
            )
            return build_model_info(metadata, config["config"])

        infos = await asyncio.gather(*(read(n) for n in names))
        self.models = dict(zip(names, infos, strict=True))
        return self.models

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        stats = await self.client.get_inference_statistics(as_json=True)
        return _statistics(stats.get("model_stats", []))

    async def probe(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self.client.is_server_ready())
        except Exception:  # any transport failure means not ready
            return False

    async def infer(
        self, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float
    ) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before the batch reached hub {self.name}")
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == object else triton_datatype(array.dtype)
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor._raw_content = bytes(_tensor_bytes(array))  # raw bytes: no per-dtype conversion
            tensors.append(tensor)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        self.inflight += 1
        try:
            async with asyncio.timeout_at(deadline):
                result = await self.client.infer(
                    model, tensors, model_version=version, outputs=requested, client_timeout=remaining
                )
        except TimeoutError:
            raise DeadlineExceeded(f"hub {self.name} did not answer {model!r} before the deadline") from None
        except InferenceServerException as exc:
            raise HubFailed(f"hub {self.name} failed: {exc.message()}") from exc
        finally:
            self.inflight -= 1
        return {n: result.as_numpy(n) for n in outputs}


def hub_backend(spec: HubSpec) -> Backend:
    return TritonGrpcBackend(spec) if spec.protocol == "grpc" else TritonHttpBackend(spec)
