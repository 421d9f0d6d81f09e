"""``python -m bench.grpc_echo``: the floor for any grpc.aio front, measured beside the gateway's gRPC front.

A bare grpc.aio server on uvloop with Triton's generated service: ``ModelInfer`` answers each call,
and ``ModelStreamInfer`` each message (with its id), with a fixed reply the shape of the gateway's
to the digits model (``label`` INT64 [1, 1] and ``probabilities`` FP32 [1, 10], as raw output
contents); ``ModelMetadata`` answers the digits model's, which tritonclient asks for first. No
decoding past protobuf's, no batching, no hub. Its CPU per call is what grpc.aio and protobuf cost
on their own, the least any front built on them spends (``make bench``, section 4).
"""

from __future__ import annotations

import argparse
import asyncio
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_echo", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    async def serve() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
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
