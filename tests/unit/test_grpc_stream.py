"""ModelStreamInfer over a scripted service: each message answered on its own, and a bounded window."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from tritonclient.grpc import service_pb2

from gateway.fronts.grpc import InferenceFront
from gateway.service import Served
from railcore.errors import BadRequest
from railcore.protocol.codec import DecodeLimits
from railcore.protocol.types import InferResponse


class ScriptedService:
    """Answers every request at once, echoing its id; ids starting with "bad" are a BadRequest."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    async def answer(self, call, request) -> Served:
        if request.id.startswith("bad"):
            raise BadRequest(f"request {request.id} is bad")
        return Served(InferResponse(request.model, "1", [], id=request.id), {})

    def record_failure(self, model, error, call=None) -> None:
        self.failures.append(error.message)


class FakeContext:
    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None

    def cancelled(self) -> bool:
        return False


def _front(window: int = 256) -> InferenceFront:
    gateway = SimpleNamespace(service=ScriptedService())
    return InferenceFront(gateway, DecodeLimits(), stream_window=window)  # type: ignore[arg-type]


def _message(request_id: str) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="m", id=request_id)
    message.inputs.add(name="x", datatype="FP32", shape=[1])
    message.raw_input_contents.append(b"\0\0\0\0")
    return message


async def test_each_message_is_answered_with_its_id_and_an_error_answers_only_its_own():
    async def messages():
        for request_id in ("a", "bad-b", "c"):
            yield _message(request_id)

    replies = [r async for r in _front().ModelStreamInfer(messages(), FakeContext())]
    assert {r.infer_response.id: r.error_message for r in replies} == {
        "a": "",
        "bad-b": "request bad-b is bad",
        "c": "",
    }


async def test_a_client_that_does_not_read_its_answers_is_not_read_past_the_window():
    read: list[int] = []

    async def messages():
        for i in range(100):
            read.append(i)
            yield _message(f"m{i}")

    stream = _front(window=4).ModelStreamInfer(messages(), FakeContext())
    first = await anext(stream)  # the writer now waits on the client, holding the rest
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader run as far as it can
    assert first.infer_response.id == "m0"
    assert len(read) <= 4 + 2, f"read {len(read)} messages while the client read one answer"
    await stream.aclose()
