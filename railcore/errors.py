"""The one error hierarchy. Each error knows its HTTP status; one middleware maps it to a reply.

    RailgateError                 500  something we did not expect (a bug: logged with traceback)
    ├── BadRequest                400  malformed body, unknown datatype, shape/size mismatch, bad header
    │   └── UnknownPolicy         400  (issue 4)
    ├── Unauthorized              401
    ├── Forbidden                 403
    ├── ModelNotFound             404  unknown model or version
    ├── RequestTimeout            408  the body did not arrive in time (slow clients)
    ├── PayloadTooLarge           413  body or tensor over the configured limit
    ├── Overloaded                429  over a rate, quota or queue bound; 503 when the gateway is full
                                       or a predicted wait exceeds the budget (carries Retry-After)
    ├── ClientGone                499  the client went away before its batch was sent (nobody reads it)
    ├── HubFailed                 502  the hub answered with an error, garbage, or closed
    ├── NoBackend                 503  no healthy backend serves the model (within the constraints)
    └── DeadlineExceeded          504  the request's latency budget ran out

Messages say what was wrong and what was expected: they go to the client as ``{"error": msg}``.
"""

from __future__ import annotations


class RailgateError(Exception):
    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:  # e.g. Overloaded as 503 when the whole gateway, not one client, is full
            self.status = status


class BadRequest(RailgateError):
    status = 400


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
    status = 429


class ClientGone(RailgateError):
    status = 499  # nginx's "client closed request": only ever seen in metrics and logs


class HubFailed(RailgateError):
    status = 502


class NoBackend(RailgateError):
    status = 503


class DeadlineExceeded(RailgateError):
    status = 504
