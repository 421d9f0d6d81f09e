"""Triton hub clients: HTTP with the binary tensor extension (default) or gRPC.

Tensors always travel to the hub as raw bytes, never as JSON numbers. Each hub has one pooled,
keep-alive connection set. Triton is told the budget the forwarder gives (the tightest member's,
less the backbone RTT) as its ``timeout``, on both protocols, so a model whose queue policy allows
it drops a request that waited past it; the call itself never outlives the batch's deadline.

Each protocol's failures are translated here, once, by cause (``_http_errors``, ``_http_status``,
``_decoded``; ``_grpc_errors``): the transport failing is ``HubUnreachable``, a reply we cannot
read is ``HubProtocolError``, the hub's 5xx is ``HubError``, its 4xx ``HubRejected`` (the
request's fault), and the deadline passing ``DeadlineExceeded``.

TLS (``hubs[].tls``) is set up once, at ``start``, by the helpers in the TLS section below: an
``https://`` hub gets an ``SSLContext`` with the pinned CA / client certificate / ``server_name``
(checked and sent as SNI, whatever address is dialled) for its ``hubhttp`` pool, a gRPC
hub with ``tls`` a secure channel; the hot path never looks at it. A probe refused by TLS (another
CA, expired, the wrong name, no client certificate) logs why once (``event=hub_tls_failed``), and plain
HTTP or insecure gRPC to a hub outside loopback logs a warning once, when its client is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends import Backend, BackendKind
from gateway.backends.hubhttp import HubConnections, Origin, Reply, ReplyUnreadable, origin
from gateway.config import HubSpec
from railcore.catalog import ModelInfo, build_model_info
from railcore.errors import (
    DeadlineExceeded,
    HubError,
    HubModelFailed,
    HubProtocolError,
    HubRejected,
    HubUnreachable,
    RailgateError,
)
from railcore.protocol import json_codec
from railcore.protocol.binary import decode_outputs, serialize_bytes_tensor
from railcore.protocol.codec import HEADER_LENGTH
from railcore.protocol.types import triton_datatype
from railcore.tls import client_context, client_pem, describe_tls_failure, is_loopback
from railcore.tracing import TRACEPARENT, headers_for

log = logging.getLogger("railgate.hub")


# -- TLS to hubs (set up once per hub client; nothing here runs per request) -----------------------


def _warn_if_plaintext(spec: HubSpec) -> None:
    """One warning for a hub reached in clear text over the network (loopback hubs are left alone)."""
    parts = urlsplit(spec.url if "://" in spec.url else f"{spec.protocol}://{spec.url}")
    plaintext = spec.tls is None and parts.scheme in ("http", "grpc")
    if plaintext and parts.hostname is not None and not is_loopback(parts.hostname):
        log.warning(
            "event=hub_plaintext hub=%s url=%s detail=traffic to this hub is not encrypted; set hubs[].tls "
            "(and https:// for an HTTP hub)",
            spec.name,
            spec.url,
        )


def _grpc_client_options(spec: HubSpec) -> dict[str, Any]:
    """tritonclient's keyword arguments for a secure channel to ``spec`` (none: an insecure one)."""
    if spec.tls is None:
        return {}
    import grpc
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    pem = client_pem(spec.tls, f"hub {spec.name} tls")
    options: dict[str, Any] = {
        "creds": grpc.ssl_channel_credentials(root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert)
    }
    if spec.tls.server_name:  # channel_args replace tritonclient's own: keep its defaults beside the override
        keepalive = KeepAliveOptions()
        options["channel_args"] = [
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.ssl_target_name_override", spec.tls.server_name),
        ]
    return options


_GRPC_TLS_WORDS = ("ssl", "handshake", "certificate", "tsi_")


class _TlsFailureLog:
    """Logs a hub's TLS refusal once, and again only after the hub has answered in between."""

    def __init__(self, hub: str) -> None:
        self.hub = hub
        self.failing = False

    def failed(self, reason: str | None) -> None:
        if reason is not None and not self.failing:
            self.failing = True
            log.warning("event=hub_tls_failed hub=%s error=%s", self.hub, reason)

    def answered(self) -> None:
        self.failing = False


def _model_path(model: str, version: str) -> str:
    model = quote(model, safe="")
    return f"/v2/models/{model}/versions/{quote(version, safe='')}" if version else f"/v2/models/{model}"


def _tensor_bytes(array: np.ndarray) -> bytes | memoryview:
    if array.dtype == object:
        return serialize_bytes_tensor(array)
    return memoryview(np.ascontiguousarray(array)).cast("B")  # type: ignore[arg-type]


@contextlib.contextmanager
def _http_errors(hub: str, model: str) -> Iterator[None]:
    """The hub client's and the socket's failures during one infer call, as ours."""
    try:
        yield
    except TimeoutError:
        raise DeadlineExceeded(f"hub {hub} did not answer {model!r} before the deadline") from None
    except ReplyUnreadable as exc:  # the hub sent something that is not HTTP we can read
        raise HubProtocolError(f"hub {hub} failed: sent an unreadable reply: {exc}") from exc
    except OSError as exc:  # refused, TLS refused, reset, closed mid-reply
        raise HubUnreachable(f"hub {hub} failed: {exc.__class__.__name__}: {exc}") from exc


def _timeout_us(seconds: float) -> int:
    """Triton's ``timeout`` in whole microseconds, at least 1 (0 would mean none)."""
    return max(int(seconds * 1e6), 1)


# Triton's words for a request its queue policy dropped when its ``timeout`` ran out (as
# UNAVAILABLE, or HTTP 503/400 by version): the budget's end, not the hub failing.
_QUEUE_TIMEOUT = "timeout expired"


def _http_status(hub: str, status: int, raw: bytes) -> None:
    """The hub's HTTP status, as ours: 4xx is the request's fault, any other non-200 the hub's."""
    if status != 200 and _QUEUE_TIMEOUT in _error_text(raw).lower():
        raise DeadlineExceeded(f"hub {hub} dropped the request at its budget: {_error_text(raw)}")
    if 400 <= status < 500:  # the request's fault, not the hub's: no failover, no mark against it
        raise HubRejected(f"hub {hub} refused the request ({status}): {_error_text(raw)}")
    if status == 500 and _is_error_reply(raw):  # Triton's own answer: the model failed on this data
        raise HubModelFailed(f"hub {hub} answered {status}: {_error_text(raw)}")
    if status != 200:
        raise HubError(f"hub {hub} answered {status}: {_error_text(raw)}")


def _is_error_reply(raw: bytes) -> bool:
    """Whether ``raw`` is Triton's ``{"error": "..."}``: the server is up and reports its model's failure."""
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _decoded(hub: str, raw: bytes, length: str | None, outputs: list[str]) -> dict[str, np.ndarray]:
    """The reply's tensors; a reply that does not parse, or lacks an output, is the hub's protocol error."""
    try:
        return decode_outputs(raw, int(length) if length is not None else None, outputs)
    except (ValueError, KeyError, TypeError, RailgateError) as exc:
        raise HubProtocolError(f"hub {hub} sent an unreadable reply: {exc}") from exc


class TritonHttpBackend(Backend):
    """A hub's HTTP API through the lean client (``hubhttp``): one bounded keep-alive pool per hub."""

    kind = BackendKind.HUB

    def __init__(self, spec: HubSpec) -> None:
        super().__init__(spec.name, spec.region, spec.price_per_1k, spec.carbon_g_per_kwh, spec.max_inflight)
        self.spec = spec
        self.base_url = spec.url.rstrip("/")
        self.pool: HubConnections | None = None
        self._metrics_pool: HubConnections | None = None
        # Each model's infer request head up to its lengths, built once; bounded by the catalog, since a
        # batch's model was validated against it.
        self._infer_heads: dict[tuple[str, str], bytes] = {}
        self._tls_log = _TlsFailureLog(spec.name)
        _warn_if_plaintext(spec)

    def _origin(self, url: str) -> Origin:
        tls = self.spec.tls
        context = client_context(tls, f"hub {self.name} tls") if tls is not None else None
        return origin(url, context, tls.server_name if tls is not None else None)

    async def start(self) -> None:
        self.pool = HubConnections(self._origin(self.base_url), self.spec.max_connections)
        if self.spec.metrics_url:
            self._metrics_pool = HubConnections(self._origin(self.spec.metrics_url), 2)

    def _infer_head(self, model: str, version: str) -> bytes:
        head = self._infer_heads.get((model, version))
        if head is None:
            assert self.pool is not None
            head = self._infer_heads[(model, version)] = (
                f"POST {_model_path(model, version)}/infer HTTP/1.1\r\nHost: {self.pool.origin.authority}\r\n"
                f"Content-Type: application/octet-stream\r\n{HEADER_LENGTH}: "
            ).encode()
        return head

    async def close(self) -> None:
        for pool in (self.pool, self._metrics_pool):
            if pool is not None:
                await pool.close()
        self.pool = self._metrics_pool = None

    async def _get(self, pool: HubConnections | None, path: str, method: str, timeout_s: float) -> Reply:
        assert pool is not None
        length = "Content-Length: 0\r\n" if method == "POST" else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: {pool.origin.authority}\r\n{length}\r\n".encode()
        return await pool.request([head], asyncio.get_running_loop().time() + timeout_s)

    async def _get_json(self, path: str, method: str = "GET", timeout_s: float = 5.0) -> Any:
        try:
            reply = await self._get(self.pool, path, method, timeout_s)
        except ReplyUnreadable as exc:
            raise HubProtocolError(f"hub {self.name}: {method} {path} sent an unreadable reply: {exc}") from exc
        if reply.status != 200:
            raise HubError(f"hub {self.name}: {method} {path} answered {reply.status}: {reply.body[:200]!r}")
        return json.loads(reply.body)

    async def discover(self) -> dict[str, ModelInfo]:
        index = await self._get_json("/v2/repository/index", method="POST")
        names = sorted({e["name"] for e in index if e.get("state", "READY") == "READY"})

        async def read(name: str) -> ModelInfo:
            path = _model_path(name, "")
            metadata, config = await asyncio.gather(self._get_json(path), self._get_json(f"{path}/config"))
            return build_model_info(metadata, config)

        self.models = await _read_models(self.name, names, read)
        return self.models

    async def probe(self, timeout_s: float) -> bool:
        try:
            reply = await self._get(self.pool, "/v2/health/ready", "GET", timeout_s)
        except (OSError, ReplyUnreadable) as exc:
            self._tls_log.failed(describe_tls_failure(exc))
            return False
        except TimeoutError:
            return False
        self._tls_log.answered()
        return reply.status == 200

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        stats = await self._get_json("/v2/models/stats")
        return _statistics(stats.get("model_stats", []))

    async def pending_requests(self) -> float | None:
        if self._metrics_pool is None:
            return None
        parts = urlsplit(self.spec.metrics_url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        reply = await self._get(self._metrics_pool, target, "GET", 2.0)
        if reply.status != 200:
            raise HubError(f"hub {self.name}: GET {self.spec.metrics_url} answered {reply.status}")
        return _pending_requests(reply.body.decode("utf-8", errors="replace"))

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float,
        timeout_s: float | None = None,
        trace: Any = None,
    ) -> dict[str, np.ndarray]:
        assert self.pool is not None
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
            "parameters": {"timeout": _timeout_us(remaining if timeout_s is None else timeout_s)},
        }
        head = json_codec.dumps(header)
        length = len(head) + sum(len(b) for b in blobs)
        extra = b""
        if trace is not None:
            traced = _traced_call(trace, {}, self.base_url)
            # W3C values never hold CR or LF; a line that did would split the request, so it is not sent
            extra = "".join(f"{k}: {v}\r\n" for k, v in traced.items() if not _CRLF & set(v)).encode("latin-1")
        request_head = self._infer_head(model, version) + b"%d\r\nContent-Length: %d\r\n%s\r\n" % (
            len(head),
            length,
            extra,
        )
        self.inflight += 1
        try:
            with _http_errors(self.name, model):
                reply = await self.pool.request([request_head, head, *blobs], deadline)
        finally:
            self.inflight -= 1
        if trace is not None:
            trace.set_attribute("http.response.status_code", reply.status)
        _http_status(self.name, reply.status, reply.body)
        return _decoded(self.name, reply.body, reply.header(_HEADER_LENGTH_KEY), outputs)


_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()
_CRLF = frozenset("\r\n")


def _traced_call(span: Any, headers: dict[str, str], url: str) -> dict[str, str]:
    """``headers`` with the hub call's W3C context (Triton's OpenTelemetry trace mode reads it), and
    the span told where it went and what it sent."""
    headers_for(span, headers)
    parts = urlsplit(url)
    span.set_attribute("server.address", parts.hostname or "")
    span.set_attribute("server.port", parts.port or 0)
    span.set_attribute("railgate.hub.traceparent", headers[TRACEPARENT])
    return headers


async def _read_models(hub: str, names: list[str], read: Callable[[str], Awaitable[ModelInfo]]) -> dict[str, ModelInfo]:
    """Each model's metadata and config, all at once (over a long-haul link each sequential call
    would cost a round trip). Discovery fails per model: one whose metadata or config cannot be
    read or understood is logged and skipped, and the hub serves the rest."""
    results = await asyncio.gather(*(read(n) for n in names), return_exceptions=True)
    models = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ModelInfo):
            models[name] = result
        elif isinstance(result, Exception):
            log.warning("event=model_discover_failed hub=%s model=%s skipped=true error=%r", hub, name, result)
        else:  # cancellation: not the model's fault
            raise result
    return models


def _pending_requests(text: str) -> float:
    """Requests queued at the hub: ``nv_inference_pending_request_count`` summed over its models."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "nv_inference_pending_request_count"
        for sample in family.samples
    )


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

    kind = BackendKind.HUB

    def __init__(self, spec: HubSpec) -> None:
        super().__init__(spec.name, spec.region, spec.price_per_1k, spec.carbon_g_per_kwh, spec.max_inflight)
        self.spec = spec
        parts = urlsplit(spec.url if "://" in spec.url else f"grpc://{spec.url}")
        self.target = f"{parts.hostname}:{parts.port}"
        self.client: Any = None
        self._tls_log = _TlsFailureLog(spec.name)
        _warn_if_plaintext(spec)

    async def start(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.client = grpcclient.InferenceServerClient(self.target, **_grpc_client_options(self.spec))

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

        self.models = await _read_models(self.name, names, read)
        return self.models

    async def statistics(self) -> dict[str, tuple[float, float, float]]:
        stats = await self.client.get_inference_statistics(as_json=True)
        return _statistics(stats.get("model_stats", []))

    async def probe(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                ready = bool(await self.client.is_server_ready())
        except Exception as exc:  # any transport failure means not ready
            text = str(exc)
            tls = self.spec.tls is not None and any(w in text.lower() for w in _GRPC_TLS_WORDS)
            self._tls_log.failed(f"TLS to {self.target} failed: {text}" if tls else None)
            return False
        self._tls_log.answered()
        return ready

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: float,
        timeout_s: float | None = None,
        trace: Any = None,
    ) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient

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
            with _grpc_errors(self.name, model):
                async with asyncio.timeout_at(deadline):
                    result = await self.client.infer(
                        model,
                        tensors,
                        model_version=version,
                        outputs=requested,
                        timeout=_timeout_us(remaining if timeout_s is None else timeout_s),
                        client_timeout=remaining,
                        headers=None if trace is None else _traced_call(trace, {}, f"grpc://{self.target}"),
                    )
        finally:
            self.inflight -= 1
        arrays = {n: result.as_numpy(n) for n in outputs}
        missing = [n for n, a in arrays.items() if a is None]
        if missing:
            raise HubProtocolError(
                f"hub {self.name} sent an unreadable reply: reply lacks output(s) {', '.join(missing)}"
            )
        return arrays


# gRPC status codes that say the request, not the hub, is wrong (as an HTTP 4xx would).
_GRPC_REJECTED = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "OUT_OF_RANGE",
     "PERMISSION_DENIED", "UNAUTHENTICATED"}
)  # fmt: skip


@contextlib.contextmanager
def _grpc_errors(hub: str, model: str) -> Iterator[None]:
    """tritonclient's gRPC failures during one infer call, as ours, by status code."""
    from tritonclient.utils import InferenceServerException

    try:
        yield
    except TimeoutError:
        raise DeadlineExceeded(f"hub {hub} did not answer {model!r} before the deadline") from None
    except InferenceServerException as exc:
        code = str(exc.status() or "").removeprefix("StatusCode.")
        if _QUEUE_TIMEOUT in str(exc.message()).lower():
            raise DeadlineExceeded(f"hub {hub} dropped the request at its budget: {exc.message()}") from None
        if code == "DEADLINE_EXCEEDED":
            raise DeadlineExceeded(f"hub {hub} did not answer {model!r} before the deadline") from None
        if code in _GRPC_REJECTED:
            raise HubRejected(f"hub {hub} refused the request ({code}): {exc.message()}") from exc
        if code == "UNAVAILABLE":
            raise HubUnreachable(f"hub {hub} failed: {exc.message()}") from exc
        if code == "INTERNAL":  # Triton's status for a model that failed on the request's data
            raise HubModelFailed(f"hub {hub} failed: {exc.message()}") from exc
        raise HubError(f"hub {hub} failed: {exc.message()}") from exc


def hub_backend(spec: HubSpec) -> Backend:
    return TritonGrpcBackend(spec) if spec.protocol == "grpc" else TritonHttpBackend(spec)
