"""One infer call on the device, whichever front read it: aiohttp's handler (edge/server.py) or the lean
Unix-socket path (edge/firmware.py). Decode (railcore.protocol), hand to the ``EdgeRuntime``, encode."""

from __future__ import annotations

from collections.abc import Mapping

from edge.runtime import EdgeRuntime
from railcore.budget import BUDGET_HEADER, requested_budget_ms
from railcore.errors import BadRequest
from railcore.protocol.codec import DecodeLimits, decode_request, encode_response, header_length
from railcore.protocol.types import InferResponse, Tensor, triton_datatype

# traceparent/tracestate: the firmware's trace context, the parent of the runtime's span (tracing on) or
# passed on to the gateway as sent (tracing off).
FORWARDED_HEADERS = ("X-Route-Policy", "X-Allowed-Regions", "Authorization", "traceparent", "tracestate")
MAX_BUDGET_MS = 3_600_000.0  # an hour: past it a budget means "no hurry", and a float is always finite


async def answer(
    runtime: EdgeRuntime,
    limits: DecodeLimits,
    model: str,
    version: str,
    headers_in: Mapping[str, str],
    content_type: str,
    body: bytes,
) -> tuple[list[bytes | memoryview], dict[str, str]]:
    """One infer call, whichever front read it (aiohttp, or edge/firmware.py's lean Unix-socket path): the
    reply's body chunks and headers. Raises RailgateError (the caller maps it to its reply)."""
    req = decode_request(
        body,
        content_type=content_type,
        header_length=header_length(headers_in),
        model=model,
        version=version,
        limits=limits,
    )
    forwarded = {}
    for name in FORWARDED_HEADERS:  # one lookup each (a header sent twice goes on with its first value, as before)
        value = headers_in.get(name)
        if value is not None:
            forwarded[name] = value
    result = await runtime.infer(
        model,
        {t.name: t.data for t in req.inputs},
        # The budget: the tighter of X-Latency-Budget-Ms and the v2 ``timeout`` (us); None: the default.
        requested_budget_ms(headers_in.get(BUDGET_HEADER), req.parameters.get("timeout"), MAX_BUDGET_MS),
        headers_in.get("X-Offload-Policy"),
        version=version,
        headers=forwarded,
    )
    local = runtime.local_model(model)
    datatypes = local.datatypes if local is not None else {}
    names = [o.name for o in req.outputs] or list(result.outputs)
    missing = [n for n in names if n not in result.outputs]
    if missing:
        raise BadRequest(f"model {model!r} has no output {missing[0]!r}; outputs are {', '.join(result.outputs)}")
    outputs = []
    for name in names:
        array = result.outputs[name]
        outputs.append(Tensor(name, datatypes.get(name) or triton_datatype(array.dtype), array.shape, array))
    model_version = version or (local.version if local is not None else "1")
    chunks, headers = encode_response(InferResponse(model, model_version, outputs, id=req.id), req)
    headers["X-Served-By"] = result.served_by
    headers["X-Offload-Reason"] = result.reason
    headers["X-Edge-Path"] = "remote" if result.offloaded else "local"
    headers["X-Edge-Latency-Ms"] = f"{result.latency_ms:.3f}"
    return chunks, headers
