"""``python -m bench.grpc_echo``: the floor for any grpc.aio front, measured beside the gateway's gRPC front.

A bare grpc.aio server on uvloop with Triton's generated service: ``ModelInfer`` answers each call,
and ``ModelStreamInfer`` each message (with its id), with a fixed reply the shape of the gateway's
to the digits model (``label`` INT64 [1, 1] and ``probabilities`` FP32 [1, 10], as raw output
contents); ``ModelMetadata`` answers the digits model's, which tritonclient asks for first. No
decoding past protobuf's, no batching, no hub. Its CPU per call is what grpc.aio and protobuf cost
on their own, the least any front built on them spends (``make bench``, section 4).

With ``--hub URL`` it is the gRPC counterpart of bench/forward_floor.py instead: ``ModelInfer`` sends
each call's raw inputs, as they came, to that hub in one binary-tensor HTTP infer with the gateway's
own lean hub client (``gateway.backends.hubhttp``) and answers the hub's outputs as raw output
contents: no validation, routing, batching, deadline or metric. Its CPU per call is the least a
grpc.aio front that calls a hub per request spends, as the gateway does at c=1. It serves no stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop
from tritonclient.grpc import service_pb2, service_pb2_grpc

OUTPUTS = (("label", "INT64", (1, 1), 8), ("probabilities", "FP32", (1, 10), 40))


def reply(request_id: str = "") -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="digits", model_version="1", id=request_id)
    for name, datatype, shape, size in OUTPUTS:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(bytes(size))
    return response


METADATA = service_pb2.ModelMetadataResponse(
    name="digits",
    versions=["1"],
    platform="onnxruntime_onnx",
    inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="pixels", datatype="FP32", shape=[-1, 64])],
    outputs=[
        service_pb2.ModelMetadataResponse.TensorMetadata(name=name, datatype=datatype, shape=[-1, shape[1]])
        for name, datatype, shape, _ in OUTPUTS
    ],
)


class Echo(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.reply = reply()

    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        return METADATA

    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:
        return self.reply

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for message in request_iterator:
            yield service_pb2.ModelStreamInferResponse(infer_response=reply(message.id))


class Forward(Echo):
    """``ModelInfer`` through the hub at ``hub_url`` (see the module's docstring)."""

    def __init__(self, hub_url: str) -> None:
        from gateway.backends.hubhttp import HubConnections, origin

        super().__init__()
        self.hub = HubConnections(origin(hub_url, None), limit=256)

    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:
        inputs = [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        ]
        header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
        version = f"/versions/{request.model_version}" if request.model_version else ""
        body_bytes = len(header) + sum(len(raw) for raw in request.raw_input_contents)
        head = (
            f"POST /v2/models/{request.model_name}{version}/infer HTTP/1.1\r\nHost: {self.hub.origin.authority}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n"
        ).encode("latin-1")
        loop = asyncio.get_running_loop()
        reply = await self.hub.request([head, header, *request.raw_input_contents], loop.time() + 30.0)
        if reply.status != 200:
            await context.abort(grpc.StatusCode.INTERNAL, f"hub answered {reply.status}: {bytes(reply.body)[:200]!r}")
        body = memoryview(reply.body)
        length = int(reply.headers.get(b"inference-header-content-length", len(body)))
        answer = json.loads(bytes(body[:length]))
        response = service_pb2.ModelInferResponse(
            model_name=answer.get("model_name", request.model_name),
            model_version=answer.get("model_version", ""),
            id=request.id,
        )
        offset = length
        for output in answer["outputs"]:
            size = output["parameters"]["binary_data_size"]
            response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
            response.raw_output_contents.append(bytes(body[offset : offset + size]))
            offset += size
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the forward floor serves no stream")
        yield  # an async generator, as grpc wants for a streaming method (never reached)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_echo", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--hub", help="forward each ModelInfer to this hub's HTTP URL (the forward floor)")
    args = p.parse_args(argv)

    async def serve() -> None:
        server = grpc.aio.server()
        servicer = Forward(args.hub) if args.hub else Echo()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        print(f"grpc echo listening 127.0.0.1:{port}", flush=True)
        try:
            await asyncio.Event().wait()  # until SIGTERM ends the process
        finally:
            await server.stop(None)

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
