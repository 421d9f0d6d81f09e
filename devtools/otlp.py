"""A real OTLP/HTTP trace receiver on loopback, for tests and `make bench`: ``POST /v1/traces``, protobuf or JSON bodies.

It runs an aiohttp server on an event loop in a thread of its own, decodes each
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps every span it was sent, flattened
into ``ReceivedSpan``s (ids as hex, as in a ``traceparent``). ``wait_for`` polls a condition on them
with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from devtools.procs import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 1 internal, 2 server, 3 client
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    events: tuple[str, ...]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    scope: str = ""
    resource: dict[str, Any] = field(default_factory=dict)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _hex_ids_to_base64(item: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if item.get(key):
            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """An export request in either OTLP/HTTP encoding: protobuf, or JSON (Triton's exporter sends JSON,
    whose ids are hex strings where protobuf's JSON mapping expects base64)."""
    request = ExportTraceServiceRequest()
    if content_type != "application/json":
        request.ParseFromString(body)
        return request
    document = json.loads(body)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _hex_ids_to_base64(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", []):
                    _hex_ids_to_base64(link, ("traceId", "spanId"))
    return json_format.ParseDict(document, request, ignore_unknown_fields=True)


def decode_spans(body: bytes, content_type: str = "application/x-protobuf") -> list[ReceivedSpan]:
    request = decode_request(body, content_type)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes=_attributes(s.attributes),
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        events=tuple(e.name for e in s.events),
                        status_code=s.status.code,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        scope=scope_spans.scope.name,
                        resource=resource,
                    )
                )
    return spans


class OtlpReceiver:
    """``with OtlpReceiver() as r``: r.endpoint is ``http://127.0.0.1:PORT``; r.spans() what arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.posts = 0
        self.bad_posts: list[str] = []
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            spans = decode_spans(body, request.content_type)
        except Exception as exc:  # recorded: a test asserts none came
            with self._lock:
                self.bad_posts.append(f"{request.content_type}: {exc!r}")
            return web.Response(status=400)
        with self._lock:
            self.posts += 1
            self._spans.extend(spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 20.0) -> list[ReceivedSpan]:
        """The spans once ``condition`` holds on them; AssertionError (listing what came) on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.spans()
            if condition(spans):
                return spans
            time.sleep(0.05)  # polling a condition with a timeout, not waiting for a fixed time
        spans = self.spans()
        if condition(spans):
            return spans
        # Each span with its ids, so a failed join says which link is missing (the first ones, in arrival order).
        most = 60
        shown = "; ".join(
            f"{s.service} {s.name} trace={s.trace_id} span={s.span_id} parent={s.parent_id or '-'}"
            for s in spans[:most]
        )
        more = f" (and {len(spans) - most} more)" if len(spans) > most else ""
        raise AssertionError(f"condition not met within {timeout_s} s; {len(spans)} spans received: {shown}{more}")
