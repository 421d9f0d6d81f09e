"""The edge runtime's errors: each is a ``railcore.errors.RailgateError``, so it knows its HTTP status.

    RailgateError
    └── EdgeError           503  the device cannot answer this call
        ├── ModelUnavailable     not on the device (or not runnable here) and the gateway is unreachable
        └── ModelRefused         the local file does not match its recorded sha256: never run locally

Errors from the protocol layer (BadRequest 400, ModelNotFound 404, DeadlineExceeded 504) and from the
gateway (its own status, passed through) keep their classes.
"""

from __future__ import annotations

from railcore.errors import RailgateError


class EdgeError(RailgateError):
    status = 503


class ModelUnavailable(EdgeError):
    """The model cannot run on the device and the gateway cannot be reached."""


class ModelRefused(EdgeError):
    """The model's file failed verification; it is never run locally."""
