"""Foreign errors become ours once, at the backend boundary, by cause (gateway/backends/): pure
tests of each translation, no sockets."""

from __future__ import annotations

import json
import ssl

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from gateway.backends import require_rows
from gateway.backends.hubhttp import ConnectionLost, ReplyUnreadable
from gateway.backends.triton import _decoded, _grpc_errors, _http_errors, _http_status, _pending_requests
from railcore.errors import (
    BadRequest,
    Cause,
    DeadlineExceeded,
    HubError,
    HubFailed,
    HubModelFailed,
    HubProtocolError,
    HubRejected,
    HubUnreachable,
)


@pytest.mark.parametrize(
    ("raised", "expected", "cause"),
    [
        (ConnectionRefusedError(111, "connection refused"), HubUnreachable, Cause.UNREACHABLE),
        (ConnectionLost("the hub closed the connection before its reply"), HubUnreachable, Cause.UNREACHABLE),
        (ConnectionResetError(104, "reset by peer"), HubUnreachable, Cause.UNREACHABLE),
        (ConnectionLost("the hub closed the connection mid-reply"), HubUnreachable, Cause.UNREACHABLE),
        (ssl.SSLCertVerificationError("certificate verify failed"), HubUnreachable, Cause.UNREACHABLE),
        (ReplyUnreadable("not an HTTP/1.x status line: b'SPAM'"), HubProtocolError, Cause.PROTOCOL),
    ],
    ids=["refused", "closed", "reset", "cut_mid_reply", "tls_refused", "not_http"],
)
def test_http_transport_failures_are_translated_by_cause(raised: Exception, expected: type, cause: Cause) -> None:
    with pytest.raises(expected, match="hub near failed: ") as caught, _http_errors("near", "digits"):
        raise raised
    assert caught.value.cause is cause and caught.value.status == 502
    assert isinstance(caught.value, HubFailed), "the hub's fault: it fails over"


def test_the_deadline_passing_is_a_deadline_not_a_hub_failure() -> None:
    expected = pytest.raises(DeadlineExceeded, match="hub near did not answer 'digits' before the deadline")
    with expected, _http_errors("near", "digits"):
        raise TimeoutError


@pytest.mark.parametrize(
    ("status", "expected", "message"),
    [
        (400, HubRejected, r"hub near refused the request \(400\): bad shape"),
        (404, HubRejected, r"refused the request \(404\)"),
        (500, HubModelFailed, "hub near answered 500: bad shape"),
        (503, HubError, "hub near answered 503"),
    ],
)
def test_the_hubs_status_is_the_requests_fault_for_4xx_the_models_for_its_500_and_the_hubs_otherwise(
    status: int, expected: type, message: str
) -> None:
    with pytest.raises(expected, match=message) as caught:
        _http_status("near", status, json.dumps({"error": "bad shape"}).encode())
    assert caught.value.status == (400 if status < 500 else 502)
    assert isinstance(caught.value, BadRequest) == (status < 500), "a 4xx neither fails over nor marks the hub"


def test_a_500_that_is_not_tritons_error_reply_is_the_hubs_error() -> None:
    with pytest.raises(HubError, match="answered 500"):
        _http_status("near", 500, b"<html>proxy error</html>")


def test_a_200_passes() -> None:
    _http_status("near", 200, b"{}")


@pytest.mark.parametrize(
    ("raw", "length", "wanted"),
    [(b"not json", None, ["y"]), (b'{"outputs": []}', None, ["y"]), (b'{"outputs": [{"name": "y"}]}', None, ["y"])],
    ids=["garbage", "missing_output", "undecodable_output"],
)
def test_a_reply_we_cannot_read_is_the_hubs_protocol_error(raw: bytes, length: str | None, wanted: list[str]) -> None:
    with pytest.raises(HubProtocolError, match="hub near sent an unreadable reply"):
        _decoded("near", raw, length, wanted)


def test_short_outputs_are_the_hubs_protocol_error() -> None:
    require_rows("near", {"y": np.zeros((3, 1))}, 3)
    with pytest.raises(HubProtocolError, match="near returned output 'y' without 3 rows"):
        require_rows("near", {"y": np.zeros((2, 1))}, 3)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("StatusCode.UNAVAILABLE", HubUnreachable),
        ("StatusCode.INVALID_ARGUMENT", HubRejected),
        ("StatusCode.NOT_FOUND", HubRejected),
        ("StatusCode.INTERNAL", HubModelFailed),
        ("StatusCode.RESOURCE_EXHAUSTED", HubError),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
        (None, HubError),
    ],
)
def test_grpc_status_codes_are_translated_by_cause(code: str | None, expected: type) -> None:
    with pytest.raises(expected), _grpc_errors("near", "digits"):
        raise InferenceServerException("scripted", status=code)


def test_pending_requests_are_read_with_the_prometheus_parser() -> None:
    text = (
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests\n"
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="digits",version="1"} 3\n'
        'nv_inference_pending_request_count{model="vision",version="1"} 2.5\n'
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="digits",version="1"} 99\n'
    )
    assert _pending_requests(text) == 5.5
    assert _pending_requests("") == 0


@pytest.mark.parametrize("status", [400, 503])
def test_a_request_triton_dropped_at_its_timeout_is_a_deadline_not_a_hub_failure(status: int) -> None:
    with pytest.raises(DeadlineExceeded, match="dropped the request at its budget"):
        _http_status("near", status, json.dumps({"error": "Request timeout expired"}).encode())


def test_a_grpc_request_triton_dropped_at_its_timeout_is_a_deadline_not_a_hub_failure() -> None:
    with pytest.raises(DeadlineExceeded), _grpc_errors("near", "digits"):
        raise InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE")
