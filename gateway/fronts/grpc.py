"""The gRPC front: KServe v2 ``inference.GRPCInferenceService`` as Triton serves it, on grpc.aio.

It runs on the gateway's own event loop beside the HTTP front and is as thin: a message is decoded
(``grpc_codec``), its metadata becomes a ``Call`` (the same keys as the HTTP headers, lower-case),
the one ``InferenceService`` answers it (so gRPC and HTTP requests share batches, routes, deadlines,
tenants and bills) and the answer is encoded. The reply headers travel as trailing metadata
(``x-served-by``, ``x-batch-size``, ``x-route-reason``, ``x-queue-ms``, ``x-backend-ms``).

The gRPC deadline is a budget too: the tighter of it, ``x-latency-budget-ms`` and the ``timeout``
parameter wins. Errors become status codes (``STATUS_CODES``) with the HTTP front's messages; a bug
is INTERNAL, logged, its text kept back. A cancelled call is dropped before its batch is sent
(grpc.aio cancels the handler, which gives up its place in the queue) and counted as a 499.
The other RPCs take the access level of their HTTP route's family (``access:``): the server's and
models' metadata, readiness, statistics and the repository index are ``metadata`` (a tenant's key, for
its own models; listings show a tenant its models only), liveness, readiness and ``grpc.health.v1``
are ``health``. Triton's model control, trace and log settings and shared-memory registration are not served
(``NOT_SERVED`` says why). ``ModelStreamInfer`` answers each message on its own (an
error answers that one message and the stream stays open), with at most ``STREAM_WINDOW`` of one
stream's messages read and not yet written back, so a stream cannot queue without bound, nor can a
client that sends and never reads make the gateway hold its answers without bound.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.call import AUTHORIZATION, Call, arrival, call_from_metadata
from gateway.config import Access
from gateway.fronts.access import Family, check_access, visible_models
from gateway.fronts.grpc_codec import decode_infer_request, encode_infer_response
from gateway.gateway import Gateway
from gateway.tracing import end_request_span, grpc_request_span
from railcore.catalog import ModelInfo
from railcore.errors import ClientGone, ModelNotFound, RailgateError
from railcore.protocol.codec import DecodeLimits
from railcore.tls import ServerTLS, server_pem

log = logging.getLogger("railgate.grpc")

VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "latency_budget"]
STREAM_WINDOW = 256  # messages of one stream in the gateway at once; the next is read when an answer is written

# Why the Triton RPCs the gateway does not serve answer UNIMPLEMENTED (the generated base class would
# say only "Method not implemented!").
NOT_SERVED = {
    "shared_memory": "railgate takes no shared memory regions: every tensor travels to a hub over the network, "
    "so send inputs in the request",
    "model_control": "railgate serves the models its hubs have loaded; load and unload models on the hubs",
    "trace_log": "railgate's logging is set with --log-level; Triton's trace and log settings are not served",
}

# An error's HTTP status -> the gRPC status code Triton's clients expect for the same failure.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: RailgateError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (binary ``-bin`` keys are not ours)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def call_from_context(
    context: grpc.aio.ServicerContext, metadata: dict[str, str], now: float, trace: Any = None
) -> Call:
    """The ``Call`` of one message: its metadata, arrival, whether the client is gone, and the gRPC
    deadline as a transport budget (none sent: None; one already past on arrival: 0, so the call is
    refused unsent rather than given the default budget). ``trace``: its span (tracing on)."""
    remaining = context.time_remaining()
    return call_from_metadata(
        metadata,
        arrived=now,
        gone=context.cancelled,
        trace=trace,
        transport_budget_s=None if remaining is None else max(remaining, 0.0),
    )


class InferenceFront(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The v2 gRPC service over one gateway."""

    def __init__(self, gateway: Gateway, decode_limits: DecodeLimits, stream_window: int = STREAM_WINDOW) -> None:
        self.gateway = gateway
        self.service = gateway.service
        self.decode_limits = decode_limits
        self.stream_window = stream_window
        self.tracer = gateway.tracer  # None: tracing off

    # -- inference --------------------------------------------------------------------------------

    async def _answer(
        self, message: service_pb2.ModelInferRequest, call: Call, into: service_pb2.ModelInferResponse | None = None
    ) -> tuple[service_pb2.ModelInferResponse, dict[str, str]]:
        """One message answered (written into ``into`` when given), or a ``RailgateError`` (counted) for every
        way it can fail."""
        try:
            request = decode_infer_request(message, self.decode_limits)
            served = await self.service.answer(call, request)
            return encode_infer_response(served.response, into), served.headers
        except RailgateError as exc:
            self.service.record_failure(message.model_name, exc, call)
            raise
        except asyncio.CancelledError:  # the client cancelled (or its deadline passed): counted as 499
            self.service.record_failure(message.model_name, ClientGone("client cancelled the call"), call)
            raise
        except Exception as exc:  # a bug: logged with its traceback; the client gets INTERNAL, not our internals
            log.exception("event=infer_failed model=%s id=%s", message.model_name[:80], message.id[:80])
            error = RailgateError("internal error in the gateway; it is logged")
            self.service.record_failure(message.model_name, error, call)
            raise error from exc
        finally:
            if call.trace is not None:
                end_request_span(call.trace, sys.exc_info()[1])  # type: ignore[arg-type]

    async def ModelInfer(self, request, context):
        metadata = _metadata(context)
        span = (
            None if self.tracer is None else grpc_request_span(self.tracer, metadata, "ModelInfer", request.model_name)
        )
        call = call_from_context(context, metadata, arrival(asyncio.get_running_loop()), span)
        try:
            response, headers = await self._answer(request, call)
        except RailgateError as exc:
            context.set_trailing_metadata(_trailers(exc.headers))
            await context.abort(status_code(exc), exc.message)
        context.set_trailing_metadata(_trailers(headers))
        return response

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[Any]:
        metadata = _metadata(context)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        window = asyncio.Semaphore(self.stream_window)
        running: set[asyncio.Task[None]] = set()

        def failed(message: service_pb2.ModelInferRequest, error: str) -> service_pb2.ModelStreamInferResponse:
            # The failed message's id comes back with its error, so a client can tell which it was.
            response = service_pb2.ModelInferResponse(model_name=message.model_name, id=message.id)
            return service_pb2.ModelStreamInferResponse(error_message=error, infer_response=response)

        async def answer(message: service_pb2.ModelInferRequest, call: Call) -> None:
            reply = service_pb2.ModelStreamInferResponse()
            try:
                await self._answer(message, call, reply.infer_response)  # filled in place, not copied into it
                answers.put_nowait(reply)
            except RailgateError as exc:  # a failure (a bug too) answers its own message; the stream goes on
                answers.put_nowait(failed(message, exc.message))

        async def read() -> None:
            loop = asyncio.get_running_loop()
            try:
                async for message in request_iterator:
                    span = None
                    if self.tracer is not None:
                        span = grpc_request_span(self.tracer, metadata, "ModelStreamInfer", message.model_name)
                    call = call_from_context(
                        context, metadata, arrival(loop), span
                    )  # its budget counts from its arrival
                    await window.acquire()
                    task = loop.create_task(answer(message, call))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
            finally:
                # Every message answered (the stream ends when the client's did), or the read failed:
                # either way the writer below wakes, and re-raises a failure when it awaits this task.
                answers.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item  # returns once grpc has taken the answer: only then is the next message read
                window.release()
            await reader  # re-raises what the reader met (e.g. a broken client stream)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    # -- server and models ------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        await allow(self.gateway, context, Family.HEALTH)
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        await allow(self.gateway, context, Family.HEALTH)
        return service_pb2.ServerReadyResponse(ready=self.gateway.ready())

    async def ServerMetadata(self, request, context):
        await allow(self.gateway, context, Family.METADATA)
        return service_pb2.ServerMetadataResponse(name="railgate", version=VERSION, extensions=EXTENSIONS)

    async def _model(self, request, context) -> tuple[ModelInfo, str]:
        await allow(self.gateway, context, Family.METADATA, request.name)
        try:
            info = self.gateway.router.model(request.name)
            info.check_version(request.version)
        except RailgateError as exc:
            await context.abort(status_code(exc), exc.message)
        return info, request.version

    async def ModelReady(self, request, context):
        await allow(self.gateway, context, Family.METADATA, request.name)
        try:
            info = self.gateway.router.model(request.name)
            info.check_version(request.version)
        except ModelNotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.gateway.router.ready(info.name))

    async def ModelMetadata(self, request, context):
        info, version = await self._model(request, context)
        metadata = info.metadata(version)
        return service_pb2.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
        )

    async def ModelConfig(self, request, context):
        info, _ = await self._model(request, context)
        config = json_format.ParseDict(info.config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        if request.name:
            await self._model(request, context)
            stats = self.gateway.statistics_for(request.name, request.version)
        else:
            authorization = await allow(self.gateway, context, Family.METADATA)
            stats = self.gateway.statistics_for(visible=visible_models(self.gateway.tenants, authorization))
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        authorization = await allow(self.gateway, context, Family.METADATA)
        visible = visible_models(self.gateway.tenants, authorization)
        router = self.gateway.router
        index = service_pb2.RepositoryIndexResponse()
        for info in router.catalog.values():
            if visible is not None and info.name not in visible:
                continue
            ready = router.ready(info.name)
            if request.ready and not ready:
                continue  # asked for the ready models only, as Triton's ``ready`` flag means
            for version in info.versions:
                index.models.add(name=info.name, version=version, state="READY" if ready else "UNAVAILABLE")
        return index

    # -- what the gateway does not serve ----------------------------------------------------------
    # Shared memory: a region in this host's memory buys nothing when every tensor crosses the network
    # to a hub, so none is ever registered. Status and unregister say so truthfully (Triton programs
    # often unregister everything before they start); register is refused, naming why.

    async def SystemSharedMemoryStatus(self, request, context):
        await allow(self.gateway, context, Family.METADATA)
        await _no_region(request.name, context)
        return service_pb2.SystemSharedMemoryStatusResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    async def SystemSharedMemoryRegister(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["shared_memory"])

    async def CudaSharedMemoryStatus(self, request, context):
        await allow(self.gateway, context, Family.METADATA)
        await _no_region(request.name, context)
        return service_pb2.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryUnregister(self, request, context):
        return service_pb2.CudaSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryRegister(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["shared_memory"])

    async def RepositoryModelLoad(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["model_control"])

    async def RepositoryModelUnload(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["model_control"])

    async def TraceSetting(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["trace_log"])

    async def LogSettings(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_SERVED["trace_log"])


async def allow(
    gateway: Gateway, context: grpc.aio.ServicerContext, family: Family, model: str | None = None
) -> str | None:
    """Abort the call (UNAUTHENTICATED or PERMISSION_DENIED) unless its key may call ``family``, at the
    level the config gives the HTTP routes of that family; returns the call's ``authorization``."""
    authorization = _metadata(context).get(AUTHORIZATION)
    try:
        check_access(Access(getattr(gateway.config.access, family)), gateway.tenants, authorization, model)
    except RailgateError as exc:
        await context.abort(status_code(exc), exc.message)
    return authorization


async def _no_region(name: str, context: grpc.aio.ServicerContext) -> None:
    if name:
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"no shared memory region {name[:80]!r}: {NOT_SERVED['shared_memory']}"
        )


def _trailers(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The HTTP front's reply headers that mean something to a gRPC client: ``x-*`` and ``retry-after``."""
    return tuple(
        (key, value)
        for key, value in ((k.lower(), v) for k, v in headers.items())
        if key.startswith("x-") or key == "retry-after"
    )


class Health(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health/Check``: SERVING while the gateway is ready (as ``/v2/health/ready``)."""

    SERVICES = ("", "inference.GRPCInferenceService")

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Check(self, request, context):
        await allow(self.gateway, context, Family.HEALTH)
        if request.service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:80]!r}")
        serving = self.gateway.ready()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class GrpcServer:
    """The grpc.aio server that carries the front and ``grpc.health.v1`` (for Kubernetes gRPC probes)."""

    def __init__(
        self, gateway: Gateway, host: str, port: int, reuse_port: bool = False, tls: ServerTLS | None = None
    ) -> None:
        limits = gateway.config.limits
        decode_limits = DecodeLimits(
            max_inputs=limits.max_inputs, max_elements=limits.max_elements, max_bytes_element=limits.max_bytes_element
        )
        # A message over the body limit is refused by grpc itself, RESOURCE_EXHAUSTED naming both sizes.
        options = [
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),  # grpc's default (1) would let two gateways share a port
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceFront(gateway, decode_limits), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(Health(gateway), self.server)
        self.host = host
        # grpc says it could not bind by raising RuntimeError (older versions: by returning port 0);
        # either way `railgate serve` exits saying which port, as it does for the HTTP one.
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
            else:  # the files were read and checked at config load; with client_ca_file, mutual TLS
                pem = server_pem(tls, "listen.tls")
                credentials = grpc.ssl_server_credentials(
                    [(pem.key, pem.cert)],
                    root_certificates=pem.client_ca,
                    require_client_auth=pem.client_ca is not None,
                )
                self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise RailgateError(f"cannot listen for gRPC on {host}:{port}: the address is in use or not available")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace_s: float) -> None:
        """Stop taking calls; those in progress get ``grace_s`` to finish (the drain already waited)."""
        await self.server.stop(grace_s)
