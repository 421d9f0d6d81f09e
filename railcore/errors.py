"""The one error hierarchy, by cause. Each error knows its HTTP status; one middleware maps it to a reply.

    RailgateError                 500  something we did not expect (a bug: logged with traceback)
    ├── BadRequest                400  malformed body, unknown datatype, shape/size mismatch, bad header
    │   └── HubRejected           400  the hub refused the request (its 4xx): the request's fault, so no
    │                                  failover and no mark against the hub
    ├── Unauthorized              401
    ├── Forbidden                 403
    ├── ModelNotFound             404  unknown model or version
    ├── RequestTimeout            408  the body did not arrive in time (slow clients)
    ├── PayloadTooLarge           413  body or tensor over the configured limit
    ├── Overloaded                     over a bound; carries Retry-After (raise a subclass)
    │   ├── RateLimited           429  over a tenant's request rate
    │   ├── QuotaExceeded         429  over a tenant's daily quota
    │   ├── QueueFull             429  a model's queue holds ``max_queued_requests``
    │   ├── Shedding              503  the gateway is at capacity (lower priorities are shed first)
    │   ├── PredictedMiss         503  the predicted queue wait plus service exceeds the budget
    │   ├── Draining              503  the gateway is shutting down: retry on another instance
    │   └── StateUnavailable      503  the fleet's shared state (Redis) is down and state.on_outage is refuse
    ├── ClientGone                499  the client went away before its batch was sent (nobody reads it)
    ├── HubFailed                 502  a backend did not serve the batch (fails over; raise a subclass)
    │   ├── HubUnreachable        502  connect refused, connection reset or closed mid-reply
    │   ├── HubProtocolError      502  garbage, a short or missing output, an undecodable reply
    │   └── HubError              502  the hub's own error (its 5xx other than a model's failure)
    ├── HubModelFailed            502  the hub (or the local runtime) ran the model and the model failed
    │                                  on this data: no mark against the hub, no failover (every hub
    │                                  would fail it), and a batch is split so only its culprit fails
    ├── NoBackend                 503  no healthy backend serves the model (within the constraints)
    └── DeadlineExceeded          504  the request's latency budget ran out

4xx/429 say "you (or your tenant) did something"; 503 says "this gateway cannot now, try elsewhere".
Foreign errors (aiohttp, gRPC, ONNX Runtime) are translated into these once, where they arise, in
``gateway/backends/``; everything above that layer acts on the class. A hub failure also names its
``cause`` (a ``Cause``), which the circuit breaker counts.

Messages say what was wrong and what was expected: they go to the client as ``{"error": msg}``.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Cause(enum.StrEnum):
    """Why a call to a backend did not succeed: what the breaker counts, and what metrics label."""

    UNREACHABLE = "unreachable"  # connect refused, reset, closed: counts against the hub
    PROTOCOL = "protocol"  # the hub answered something unreadable: counts against the hub
    ERROR = "error"  # the hub's own error (5xx): counts against the hub
    TIMEOUT = "timeout"  # no answer within the hub's own p95: counts against the hub
    REJECTED = "rejected"  # the hub's 4xx: the request's fault, never counts against the hub
    MODEL = "model"  # the model failed on this data (Triton's 500 with its error, gRPC INTERNAL): not the hub


class RailgateError(Exception):
    status = 500  # each class has its own: raise the one whose status you mean

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(RailgateError):
    status = 400


class HubRejected(BadRequest):
    """The hub answered 4xx: the request, not the hub, is at fault."""

    cause: ClassVar[Cause] = Cause.REJECTED


class Unauthorized(RailgateError):
    status = 401


class Forbidden(RailgateError):
    status = 403


class ModelNotFound(RailgateError):
    status = 404


class RequestTimeout(RailgateError):
    status = 408


class PayloadTooLarge(RailgateError):
    status = 413


class Overloaded(RailgateError):
    """Over a bound, answered with Retry-After: raise the subclass that says which bound."""

    status = 429


class RateLimited(Overloaded):
    status = 429


class QuotaExceeded(Overloaded):
    status = 429


class QueueFull(Overloaded):
    status = 429


class Shedding(Overloaded):
    status = 503


class PredictedMiss(Overloaded):
    status = 503


class Draining(Overloaded):
    status = 503


class StateUnavailable(Overloaded):
    status = 503


class ClientGone(RailgateError):
    status = 499  # nginx's "client closed request": only ever seen in metrics and logs


class HubFailed(RailgateError):
    """A backend did not serve the batch: the forwarder fails over, the breaker counts ``cause``."""

    status = 502
    cause: ClassVar[Cause] = Cause.ERROR


class HubUnreachable(HubFailed):
    cause = Cause.UNREACHABLE


class HubProtocolError(HubFailed):
    cause = Cause.PROTOCOL


class HubError(HubFailed):
    cause = Cause.ERROR


class HubModelFailed(RailgateError):
    """The model ran and failed on the batch's data (e.g. a string its ``Cast`` cannot parse).

    Not a ``HubFailed``: the hub is healthy (it answered, with the model's error), another hub
    would fail the same data, and one client's input must not eject a hub for every model."""

    status = 502
    cause: ClassVar[Cause] = Cause.MODEL


class NoBackend(RailgateError):
    status = 503


class DeadlineExceeded(RailgateError):
    status = 504
