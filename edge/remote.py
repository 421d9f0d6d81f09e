"""The device's client for the gateway: inference with the binary tensor extension, probes, metadata.

One pooled keep-alive aiohttp session, on the runtime's event loop. A call that the gateway could not
serve (transport error, timeout, 429/5xx, an unreadable reply) raises ``RemoteFailed``: the runtime
counts it against the circuit and runs the call locally; 401/403/404 (this device's key, its tenant's
models, the gateway's catalogue) also run locally but say nothing of the gateway's health. A 4xx that says
the request itself is wrong is the caller's error, passed through with the gateway's status and message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import numpy as np

from railcore.catalog import ModelInfo, build_model_info
from railcore.errors import Cause, RailgateError
from railcore.protocol.binary import decode_outputs, serialize_bytes_tensor
from railcore.protocol.codec import HEADER_LENGTH
from railcore.protocol.types import triton_datatype
from railcore.tls import ClientTLS, describe_tls_failure, https_connector

log = logging.getLogger("railgate.edge.remote")


class RemoteFailed(Exception):
    """The gateway did not serve the call, and why (``cause``): whether it timed out, and whether it is
    evidence the gateway is unwell (a ``REJECTED`` call, 401/403/404, is not)."""

    def __init__(self, message: str, cause: Cause = Cause.ERROR) -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def timeout(self) -> bool:
        return self.cause is Cause.TIMEOUT

    @property
    def counts(self) -> bool:
        return self.cause is not Cause.REJECTED


class GatewayRejected(RailgateError):
    """The gateway refused the request as invalid (4xx): the caller gets the gateway's status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RemoteReply:
    outputs: dict[str, np.ndarray]
    served_by: str  # the gateway's X-Served-By: the hub's name, or "local" for the gateway's own backend
    route_reason: str
    total_ms: float  # measured here, request sent to reply read
    queue_ms: float  # reported by the gateway
    backend_ms: float


def _tensor_bytes(array: np.ndarray) -> bytes | memoryview:
    if array.dtype.kind in "OSU":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array).data.cast("B")


def _header_ms(headers: Mapping[str, str], name: str) -> float:
    try:
        value = float(headers.get(name, "0"))
    except ValueError:
        return 0.0
    return value if value >= 0 else 0.0


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return repr(raw[:200])


class GatewayClient:
    """The pooled client; with ``tls`` (``gateway_tls``) an https:// gateway is checked against the pinned CA.

    A handshake that fails (a certificate of another CA, expired, the wrong name) is ``RemoteFailed``
    like any unreachable gateway, so the call runs locally; its reason is logged once (again only
    after the gateway has answered in between), not once per call."""

    def __init__(
        self, base_url: str, api_key: str | None = None, max_connections: int = 32, tls: ClientTLS | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.max_connections = max_connections
        self.tls = tls
        self.session: aiohttp.ClientSession | None = None
        self._tls_failing = False

    def _unreachable(self, exc: BaseException) -> RemoteFailed:
        """A transport failure as RemoteFailed; a TLS one says so, and is logged once."""
        tls = describe_tls_failure(exc)
        if tls is None:
            return RemoteFailed(f"gateway unreachable: {exc.__class__.__name__}: {exc}", Cause.UNREACHABLE)
        pinned = f" (gateway_tls.ca_file: {self.tls.ca_file})" if self.tls is not None and self.tls.ca_file else ""
        message = f"gateway {self.base_url}: {tls}{pinned}; calls run on the device"
        if not self._tls_failing:
            self._tls_failing = True
            log.error("event=gateway_tls_failed gateway=%s error=%s", self.base_url, message)
        return RemoteFailed(message, Cause.UNREACHABLE)

    async def start(self) -> None:
        self.base_url, connector = https_connector(
            self.base_url, self.tls, "gateway_tls", limit=self.max_connections, keepalive_timeout=30
        )
        # Absolute URLs (not a session base_url): a gateway_url may carry a path prefix.
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            headers=auth_headers(self.api_key),  # a call's own Authorization (forwarded from firmware) wins
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> RemoteReply:
        """One call, cut after ``timeout_s`` (which is also the budget the gateway is told)."""
        assert self.session is not None, "GatewayClient.start() first"
        blobs = [_tensor_bytes(a) for a in inputs.values()]
        header = {
            "inputs": [
                {
                    "name": name,
                    "datatype": "BYTES" if a.dtype.kind in "OSU" else triton_datatype(a.dtype),
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
                for (name, a), blob in zip(inputs.items(), blobs, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        request_headers = {
            **(headers or {}),
            HEADER_LENGTH: str(len(head)),
            "Content-Type": "application/octet-stream",
            "X-Latency-Budget-Ms": f"{timeout_s * 1000:.3f}",
        }
        path = f"{self.base_url}/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.post(path, data=b"".join([head, *blobs]), headers=request_headers) as reply:
                    raw = await reply.read()
        except TimeoutError:
            raise RemoteFailed(f"did not answer {model!r} within {timeout_s * 1000:.1f} ms", Cause.TIMEOUT) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from exc
        self._tls_failing = False
        total_ms = (time.perf_counter() - started) * 1000
        if reply.status in (401, 403, 404):
            # The gateway will not serve this device or model (key, tenant, catalogue): no sign of ill health,
            # and the call can still run locally.
            raise RemoteFailed(f"gateway answered {reply.status}: {_error_text(raw)}", Cause.REJECTED)
        if 400 <= reply.status < 500 and reply.status != 429:
            raise GatewayRejected(reply.status, f"gateway: {_error_text(raw)}")
        if reply.status != 200:
            raise RemoteFailed(f"gateway answered {reply.status}: {_error_text(raw)}")
        length = reply.headers.get(HEADER_LENGTH)
        try:
            outputs = decode_outputs(raw, int(length) if length is not None else None, [])
        except (ValueError, KeyError, TypeError, RailgateError) as exc:
            raise RemoteFailed(f"gateway sent an unreadable reply: {exc}", Cause.PROTOCOL) from exc
        return RemoteReply(
            outputs=outputs,
            served_by=reply.headers.get("X-Served-By", "gateway"),
            route_reason=reply.headers.get("X-Route-Reason", ""),
            total_ms=total_ms,
            queue_ms=_header_ms(reply.headers, "X-Queue-Ms"),
            backend_ms=_header_ms(reply.headers, "X-Backend-Ms"),
        )

    async def probe(self, timeout_s: float) -> float | None:
        """Round trip of ``/v2/health/ready`` in ms when the gateway is ready, else None."""
        assert self.session is not None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s), self.session.get(f"{self.base_url}/v2/health/ready") as reply:
                await reply.read()
        except (aiohttp.ClientError, OSError) as exc:
            self._unreachable(exc)  # logs a TLS failure's reason, once
            return None
        except TimeoutError:
            return None
        self._tls_failing = False
        return (time.perf_counter() - started) * 1000 if reply.status == 200 else None

    async def model_info(self, model: str, timeout_s: float) -> ModelInfo:
        """The gateway's metadata and config for ``model``."""
        assert self.session is not None

        async def get(path: str) -> dict:
            async with self.session.get(f"{self.base_url}{path}") as reply:  # type: ignore[union-attr]
                body = await reply.read()
                if reply.status == 404:
                    raise GatewayRejected(404, f"gateway: {_error_text(body)}")
                if reply.status != 200:
                    raise RemoteFailed(f"gateway answered {reply.status} to GET {path}: {_error_text(body)}")
                return json.loads(body)

        try:
            async with asyncio.timeout(timeout_s):
                metadata, config = await asyncio.gather(get(f"/v2/models/{model}"), get(f"/v2/models/{model}/config"))
        except TimeoutError:
            raise RemoteFailed(
                f"gateway did not send metadata of {model!r} within {timeout_s:.1f} s", Cause.TIMEOUT
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from exc
        except ValueError as exc:
            raise RemoteFailed(f"gateway unreachable: {exc.__class__.__name__}: {exc}", Cause.UNREACHABLE) from exc
        return build_model_info(metadata, config)
