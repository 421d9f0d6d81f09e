"""The gRPC front (``gateway/fronts/grpc.py``) without a server: a call's context -> the service's
``Call``, and the inference RPCs over a scripted service (each stream message answered on its own, a
bounded stream window, a bug answered INTERNAL without its internals)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from tritonclient.grpc import service_pb2

from gateway.fronts.grpc import InferenceFront, call_from_context
from gateway.service import Served
from railcore.errors import BadRequest
from railcore.protocol.codec import DecodeLimits
from railcore.protocol.types import InferResponse


class ScriptedService:
    """Answers every request at once, echoing its id; ids starting with "bad" are a BadRequest and
    ids starting with "bug" raise what a bug would."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    async def answer(self, call, request) -> Served:
        if request.id.startswith("bad"):
            raise BadRequest(f"request {request.id} is bad")
        if request.id.startswith("bug"):
            raise KeyError("secret internals")
        return Served(InferResponse(request.model, "1", [], id=request.id), {})

    def record_failure(self, model, error, call=None) -> None:
        self.failures.append(error.message)


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.trailers: tuple = ()

    async def abort(self, code, details: str):
        raise Aborted(code, details)

    def set_trailing_metadata(self, trailers) -> None:
        self.trailers = trailers

    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return None

    def cancelled(self) -> bool:
        return False


def _front(window: int = 256) -> InferenceFront:
    gateway = SimpleNamespace(service=ScriptedService(), tracer=None)
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


async def test_a_bug_in_a_unary_call_is_internal_and_hides_the_exception():
    front = _front()
    with pytest.raises(Aborted) as caught:
        await front.ModelInfer(_message("bug-1"), FakeContext())
    code, details = caught.value.args
    assert code == grpc.StatusCode.INTERNAL and "internal error" in details and "secret" not in details
    assert front.service.failures == ["internal error in the gateway; it is logged"]


async def test_a_bug_on_a_stream_answers_its_own_message_and_the_stream_goes_on():
    async def messages():
        for request_id in ("bug-1", "ok"):
            yield _message(request_id)

    replies = [r async for r in _front().ModelStreamInfer(messages(), FakeContext())]
    by_id = {r.infer_response.id: r.error_message for r in replies}
    assert by_id["ok"] == "" and "internal error" in by_id["bug-1"]


class DeadlineContext:
    """The part of ``grpc.aio.ServicerContext`` that ``call_from_context`` reads."""

    def __init__(self, remaining: float | None, cancelled: bool = False) -> None:
        self.remaining = remaining
        self._cancelled = cancelled

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return self._cancelled


@pytest.mark.parametrize(
    ("remaining", "budget"),
    [(None, None), (2.5, 2.5), (0.0, 0.0), (-0.3, 0.0)],
    ids=["no-deadline", "deadline-ahead", "deadline-now", "deadline-already-past"],
)
def test_the_grpc_deadline_becomes_the_transport_budget(remaining: float | None, budget: float | None):
    call = call_from_context(DeadlineContext(remaining), {}, now=100.0)  # type: ignore[arg-type]
    assert call.transport_budget_s == budget and call.arrived == 100.0


def test_metadata_keys_become_the_calls_fields_unparsed():
    metadata = {"authorization": "Bearer k", "x-latency-budget-ms": "soon", "x-route-policy": "cheapest",
                "x-allowed-regions": "west", "x-priority": "vip"}  # fmt: skip
    call = call_from_context(DeadlineContext(None), metadata, now=0.0)  # type: ignore[arg-type]
    assert (call.authorization, call.budget_ms, call.policy, call.regions, call.priority) == (
        "Bearer k", "soon", "cheapest", "west", "vip"
    )  # fmt: skip


def test_a_cancelled_context_is_a_call_whose_client_is_gone():
    assert call_from_context(DeadlineContext(None, cancelled=True), {}, now=0.0).gone()  # type: ignore[arg-type]
    assert not call_from_context(DeadlineContext(None), {}, now=0.0).gone()  # type: ignore[arg-type]
