"""Hostile input over real sockets: whatever a client sends, the gateway answers quickly with a documented status
and ``{"error": ...}``, never a 500 or a hang, and stays up.

Three layers: schemathesis walks every documented operation (``gateway/openapi.py``) with valid and invalid
requests; hypothesis throws random bodies and headers at ``/v2/models/digits/infer``; targeted cases try what
fuzzers rarely reach (huge headers, deep nesting, length prefixes and shapes that claim gigabytes).

These run against their own gateway in front of the session hub, not the session ``gateway``: fuzzing drains
hubs, reloads the config and sends requests that get the hub ejected, which would fail the tests sharing it.
``tests/system/fuzz_long.py`` (``make fuzz``) runs the same fuzzers for much longer.

Known bugs are pinned by ``xfail(strict=True)`` tests at the end, and the random generators steer around
them (``known_bug``) so that they keep looking for new ones; when a bug is fixed its test XPASSes and fails:
delete the mark and its ``known_bug`` clause.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks
from schemathesis.transport.serialization import Binary

from gateway.config import PRIORITIES
from gateway.openapi import openapi_document
from gateway.routing.policy import POLICIES
from hub.server import Hub
from railcore.catalog import ModelInfo, TensorMeta
from railcore.protocol.types import DTYPES
from tests.conftest import GatewayProcess, hub_entry

# A gateway answers 502/503/504 when a hub fails, none is healthy, or the budget ran out: states, not bugs.
GATEWAY_STATES = {502, 503, 504}
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")
LIMIT = 4 * 1024 * 1024  # limits.max_body_bytes of the fuzzed gateway
IO_TIMEOUT_S = 10.0  # every request: a hang fails the test instead of stalling it


def fuzz_config(hub: Hub) -> dict[str, Any]:
    """The session gateway's config: one HTTP hub, no local backend."""
    return {
        "hubs": [hub_entry(hub)],
        "local": {"enabled": False},
        "health": {"probe_interval_s": 0.5},
        "limits": {"max_body_bytes": LIMIT},
    }


@pytest.fixture(scope="module")
def fuzz_gateway(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("fuzz"), fuzz_config(hub)).start()
    yield gateway
    gateway.stop()


def served_models(url: str) -> dict[str, ModelInfo]:
    """The gateway's catalog, as its own HTTP API reports it."""

    def fetch(path: str, method: str = "GET") -> Any:
        with urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=IO_TIMEOUT_S) as r:
            return json.loads(r.read())

    models = {}
    for name in sorted({entry["name"] for entry in fetch("/v2/repository/index", "POST")}):
        meta, config = fetch(f"/v2/models/{name}"), fetch(f"/v2/models/{name}/config")
        tensors = {
            side: tuple(TensorMeta(t["name"], t["datatype"], tuple(t["shape"])) for t in meta[side])
            for side in ("inputs", "outputs")
        }
        models[name] = ModelInfo(
            name,
            tuple(meta["versions"]),
            meta["platform"],
            tensors["inputs"],
            tensors["outputs"],
            int(config.get("max_batch_size", 0)),
        )
    return models


# -- what every answer must be ---------------------------------------------------------------------------


def error_message(status: int, content_type: str, body: bytes, *, msgpack_request: bool) -> str:
    """The message of an error reply; fails unless it is ``{"error": str}`` in the request's encoding."""
    expected = "application/msgpack" if msgpack_request else "application/json"
    assert content_type.split(";")[0].strip() == expected, f"{status} error sent as {content_type!r}: {body[:200]!r}"
    try:
        reply = msgpack.unpackb(body, raw=False) if msgpack_request else json.loads(body)
    except Exception as exc:
        raise AssertionError(f"{status} error body is not {expected}: {body[:200]!r}") from exc
    assert isinstance(reply, dict) and set(reply) == {"error"}, f"{status} error is not {{'error': ...}}: {reply!r}"
    assert isinstance(reply["error"], str) and reply["error"], f"{status} error message is empty: {reply!r}"
    return reply["error"]


def is_msgpack(content_type: str | None) -> bool:
    return content_type is not None and content_type.strip().lower().startswith(MSGPACK_TYPES)


def no_unexpected_server_error(ctx, response, case) -> None:
    """No 5xx but the gateway states: a 500 is a bug."""
    if response.status_code >= 500 and response.status_code not in GATEWAY_STATES:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code}: {response.content[:300]!r}"
        )


def errors_are_error_objects(ctx, response, case) -> None:
    """Every error with a body is ``{"error": str}``; the documented body-less ones (``/ready``'s 503) stay empty."""
    if response.status_code < 400:
        return
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    if not response.content and "content" not in documented and "$ref" not in documented:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    request_type = case.media_type or (case.headers or {}).get("Content-Type")
    error_message(response.status_code, content_type, response.content, msgpack_request=is_msgpack(request_type))


CHECKS = [
    no_unexpected_server_error,
    errors_are_error_objects,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]


def _plain(value: Any) -> Any:
    """A generated value as msgpack can carry it: ``Binary`` (format: binary) as bytes, integers past 64 bits
    (which JSON Schema allows and msgpack cannot encode) as floats."""
    if isinstance(value, Binary):
        return value.data
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value) if abs(value) < 2**1023 else math.copysign(math.inf, value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@schemathesis.serializer(*MSGPACK_TYPES)
def _msgpack_body(ctx, value: Any) -> bytes:
    return msgpack.packb(_plain(value), use_bin_type=True)


@schemathesis.deserializer(*MSGPACK_TYPES)
def _msgpack_reply(ctx, response) -> Any:
    # bin becomes a str of the same length so that ``format: binary`` (a JSON string) validates.
    def text(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, dict):
            return {k: text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [text(v) for v in value]
        return value

    return text(msgpack.unpackb(response.content, raw=False))


def load_schema(url: str) -> Any:
    """The gateway's OpenAPI document, built with the models it serves, aimed at ``url``."""
    schema = schemathesis.openapi.from_dict(openapi_document(served_models(url)))
    schema.config.update(base_url=url, request_timeout=IO_TIMEOUT_S)
    return schema


def fuzz_operation(schema: Any, operation: str, max_examples: int) -> None:
    """Valid and invalid requests (and the documented examples) to one operation; every reply checked."""
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    # Negative generation is unsatisfiable where nothing can be made invalid (GET /v2): one_of skips it there.
    cases = st.one_of(
        *(api_operation.as_strategy(generation_mode=mode) for mode in GenerationMode),
        *schema.get_strategies_from_examples(api_operation),
    )

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def run(case) -> None:
        if known_bug(case.headers or {}, case.body):
            reject()
        response = case.call(timeout=IO_TIMEOUT_S)
        case.validate_response(response, checks=CHECKS)

    run()


# One test per documented operation. (schemathesis.pytest.from_fixture, which would build these from a fixture,
# reads Node._nodeid, which pytest 9.2 no longer has.)
OPERATIONS = [f"{m.upper()} {p}" for p, item in openapi_document()["paths"].items() for m in item if m != "parameters"]


def skip_unless_served(gateway: GatewayProcess, operation: str) -> None:
    if operation == "GET /openapi.json" and fetch_status(gateway.url + "/openapi.json") == 404:
        pytest.skip("GET /openapi.json is not registered in gateway.fronts.http.create_app yet")


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT_S) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


# -- (a) every documented operation, valid and invalid requests (schemathesis) ----------------------------


@pytest.fixture(scope="module")
def gateway_schema(fuzz_gateway: GatewayProcess):
    return load_schema(fuzz_gateway.url)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_keeps_its_documented_contract(fuzz_gateway: GatewayProcess, gateway_schema, operation: str):
    skip_unless_served(fuzz_gateway, operation)
    fuzz_operation(gateway_schema, operation, max_examples=25)
    assert_live(fuzz_gateway)


# -- (b) random bodies and headers at one inference route (hypothesis) ------------------------------------

DIGITS_REQUEST = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/msgpack",
    "application/x-msgpack",
    "APPLICATION/MSGPACK; q=1",
    "application/octet-stream",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
]
# Where a mutation lands in a valid request: a key path, ints indexing lists.
MUTATION_PATHS = [
    (),
    ("id",),
    ("parameters",),
    ("parameters", "timeout"),
    ("parameters", "binary_data_output"),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "data"),
    ("inputs", 0, "data", 0),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "parameters", "binary_data_size"),
    ("inputs", 1),
    ("outputs",),
    ("outputs", 0),
    ("outputs", 0, "parameters", "binary_data"),
]
# Sent UTF-8 encoded, as browsers and most clients do; no control characters (http.client refuses CR and LF).
HEADER_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=24)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | st.sampled_from([*DTYPES, "pixels", "label", "probabilities", 0, 1, -1, 64, 256, 257, 2**31, 2**63, 2**64])
)
# Near-valid values reach further into the decoder than arbitrary ones: shapes, 64-element data, nesting.
near_valid = (
    st.lists(st.integers(min_value=-2, max_value=2**64), max_size=9)
    | st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**65), 2**65), min_size=64, max_size=64)
    | st.lists(st.lists(st.floats(width=32), min_size=8, max_size=8), min_size=8, max_size=8)
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=5)


json_values = near_valid | st.recursive(scalars, containers, max_leaves=24)
msgpack_values = st.binary(max_size=300) | st.recursive(
    scalars.filter(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**64) | st.binary(max_size=300),
    containers,
    max_leaves=24,
)


def mutated(base: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of ``base`` with ``value`` at ``path`` (missing containers are created, lists extended)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(base) if isinstance(base, list) else []
        while len(items) <= head:
            items.append({})
        items[head] = mutated(items[head], rest, value)
        return items
    node = dict(base) if isinstance(base, dict) else {}
    node[head] = mutated(node.get(head), rest, value)
    return node


def sometimes(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly absent or valid, now and then hostile: a bad header is refused before the body is read, so
    hostile headers on every request would leave the body decoder untested."""
    return st.one_of(st.none(), st.none(), st.none(), valid, HEADER_TEXT)


BINARY_REQUEST = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}]
}
MSGPACK_REQUEST = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": b"\0" * 256}]}


@st.composite
def infer_requests(draw) -> tuple[bytes, dict[str, str], Any]:
    """(body, headers, the decoded structure when there is one) for ``POST /v2/models/digits/infer``: random bytes,
    or a valid request in one of the three encodings with up to three parts replaced by random values."""
    kind = draw(st.sampled_from(["bytes", "json", "binary", "msgpack"]))
    base: Any = {"msgpack": MSGPACK_REQUEST, "binary": BINARY_REQUEST}.get(kind, DIGITS_REQUEST)
    values = msgpack_values if kind == "msgpack" else json_values
    structure: Any = base
    for path, value in draw(st.lists(st.tuples(st.sampled_from(MUTATION_PATHS), values), max_size=3)):
        structure = mutated(structure, path, value)
    headers: dict[str, str] = {}
    natural = None
    if kind == "bytes":
        structure, body = None, draw(st.binary(max_size=2048))
    elif kind == "msgpack":
        body, natural = msgpack.packb(structure, use_bin_type=True), draw(st.sampled_from(MSGPACK_TYPES))
    else:
        body = json.dumps(structure).encode()  # NaN and Infinity as Python writes them, as some clients do
        natural = draw(st.sampled_from([None, "application/json"]))
    if kind == "binary":
        headers["Inference-Header-Content-Length"] = str(len(body))
        body += draw(st.binary(min_size=256, max_size=256) | st.binary(max_size=512))
        natural = draw(st.sampled_from([None, "application/octet-stream"]))
    content_type = draw(st.one_of(st.just(natural), st.just(natural), st.sampled_from(CONTENT_TYPES), HEADER_TEXT))
    drawn = {
        "Content-Type": content_type,
        "Inference-Header-Content-Length": draw(sometimes(st.integers(-5, 5000).map(str))),
        "X-Latency-Budget-Ms": draw(sometimes(st.floats(0, 1e6).map(str) | st.integers(0, 10**6).map(str))),
        "X-Route-Policy": draw(sometimes(st.sampled_from(POLICIES))),
        "X-Allowed-Regions": draw(sometimes(st.sampled_from(["west", "west,east", "east"]))),
        "X-Priority": draw(sometimes(st.sampled_from(PRIORITIES))),
    }
    headers.update({name: value for name, value in drawn.items() if value is not None})
    return body, headers, structure


def known_bug(headers: dict[str, str], structure: Any) -> str | None:
    """Which pinned bug (an xfail test below) a request would trigger, if any."""
    return None  # every bug found so far is fixed; pinned tests below keep them fixed


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    try:
        connection.request("POST", path, body=body, headers={k: v.encode() for k, v in headers.items()})
        reply = connection.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read()
    finally:
        connection.close()


def assert_live(gateway: GatewayProcess) -> None:
    with urllib.request.urlopen(f"{gateway.url}/v2/health/live", timeout=IO_TIMEOUT_S) as reply:
        assert reply.status == 200
    unhandled = [line for line in gateway.service.output if "event=unhandled" in line]
    assert not unhandled, f"the gateway logged unhandled errors: {unhandled[:3]}"


INFER_STATUSES = {200, 400, 404, 413, 429, 503, 504}


def check_infer_reply(gateway: GatewayProcess, body: bytes, headers: dict[str, str]) -> None:
    status, content_type, reply = post(gateway.port, "/v2/models/digits/infer", body, headers)
    assert status in INFER_STATUSES, f"{status} for {headers} {body[:300]!r}: {reply[:300]!r}"
    if status >= 400:
        error_message(status, content_type, reply, msgpack_request=is_msgpack(headers.get("Content-Type")))


def fuzz_infer(gateway: GatewayProcess, max_examples: int) -> None:
    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(infer_requests())
    def run(request: tuple[bytes, dict[str, str], Any]) -> None:
        body, headers, structure = request
        if known_bug(headers, structure):
            reject()
        check_infer_reply(gateway, body, headers)

    run()
    assert_live(gateway)


def test_random_bodies_and_headers_get_a_documented_status_and_a_json_error(fuzz_gateway: GatewayProcess):
    fuzz_infer(fuzz_gateway, max_examples=150)


# -- (c) what fuzzers rarely reach ------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes, float]:
    """Send ``request`` byte for byte; (status, lower-cased headers, body, seconds until the reply was read)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        body = reply.read()
    headers = {name.lower(): value for name, value in reply.getheaders()}
    return reply.status, headers, body, time.monotonic() - started


def http_post(path: bytes, body: bytes, *extra: bytes, content_type: bytes = b"application/json") -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: " + content_type, *extra]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


DIGITS_BODY = json.dumps(DIGITS_REQUEST).encode()
VOCAB_HEADER = b'{"inputs":[{"name":"word","datatype":"BYTES","shape":[1,1],"parameters":{"binary_data_size":8}}]}'
HUGE_PREFIX = struct.pack("<I", 2**32 - 1) + b"abcd"  # one BYTES element claiming 4 GiB, 4 bytes present


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "request_bytes",
    [
        http_post(b"/v2/models/digits/infer", DIGITS_BODY, b"X-Long: " + b"a" * 9000),
        http_post(b"/v2/models/digits/infer", DIGITS_BODY, *(b"X-H%d: v" % i for i in range(200))),
    ],
    ids=["header-line-over-8KiB", "200-headers"],
)
def test_oversized_headers_are_refused_at_once(fuzz_gateway: GatewayProcess, request_bytes: bytes):
    status, _, _, elapsed = raw_exchange(fuzz_gateway.port, request_bytes)
    assert status in (400, 431)
    assert elapsed < 2.0
    assert_live(fuzz_gateway)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"0" + b"]" * depth


def _digits_post(body: Any, *extra: bytes) -> bytes:
    return http_post(b"/v2/models/digits/infer", json.dumps(body).encode() if isinstance(body, dict) else body, *extra)


def _msgpack_post(model: bytes, body: dict[str, Any]) -> bytes:
    return http_post(b"/v2/models/" + model + b"/infer", msgpack.packb(body), content_type=b"application/msgpack")


def _pixels(shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": shape, "data": data}]}


HUGE_CLAIMS = [
    pytest.param(
        _digits_post(
            b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,64],"data":' + _nested(10_000) + b"}]}"
        ),
        {400},
        id="data-nested-10000-deep",
    ),
    pytest.param(_digits_post(_nested(100_000)), {400}, id="body-nested-100000-deep"),
    pytest.param(
        http_post(b"/v2/models/digits/infer", b"\x91" * 100_000 + b"\xc0", content_type=b"application/msgpack"),
        {400},
        id="msgpack-nested-100000-deep",
    ),
    pytest.param(
        http_post(
            b"/v2/models/vocab/infer",
            VOCAB_HEADER + HUGE_PREFIX,
            b"Inference-Header-Content-Length: %d" % len(VOCAB_HEADER),
            content_type=b"application/octet-stream",
        ),
        {400, 413},
        id="bytes-element-claims-4GiB-binary",
    ),
    pytest.param(
        _msgpack_post(
            b"vocab", {"inputs": [{"name": "word", "datatype": "BYTES", "shape": [1, 1], "data": HUGE_PREFIX}]}
        ),
        {400, 413},
        id="bytes-element-claims-4GiB-msgpack",
    ),
    pytest.param(_digits_post(_pixels([2**31, 2**31], [0])), {400, 413}, id="shape-of-2**62-elements-json"),
    pytest.param(_msgpack_post(b"digits", _pixels([2**62], b"")), {400, 413}, id="shape-of-2**62-elements-msgpack"),
    pytest.param(_digits_post(_pixels([2**62, 0], [])), {400, 413}, id="shape-2**62-by-0"),
    pytest.param(
        _digits_post(DIGITS_BODY, b"Inference-Header-Content-Length: " + b"9" * 400),
        {400},
        id="header-length-400-digits",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("request_bytes", "statuses"), HUGE_CLAIMS)
def test_bodies_that_claim_huge_sizes_are_refused_quickly_without_allocating(
    fuzz_gateway: GatewayProcess, request_bytes: bytes, statuses: set[int]
):
    before = peak_rss_kib(fuzz_gateway.service.pid)
    status, headers, body, elapsed = raw_exchange(fuzz_gateway.port, request_bytes)
    assert status in statuses, body[:300]
    error_message(status, headers.get("content-type", ""), body, msgpack_request=b"msgpack" in request_bytes[:200])
    assert elapsed < 1.0
    assert peak_rss_kib(fuzz_gateway.service.pid) - before < 64 * 1024, "the gateway allocated for the claimed size"
    assert_live(fuzz_gateway)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path",
    [
        b"/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
        b"/v2/models/../../etc/passwd/infer",
        b"/v2/models/%2e%2e/%2e%2e/infer",
        b"/v2/models/%C3%BC%F0%9D%94%98/infer",
        b"/v2/models/%FF%FE/infer",
        b"/v2/models/a%00b/infer",
        b"/v2/models/" + b"m" * 1000 + b"/infer",
        b"/v2/models/digits/versions/" + b"9" * 1000 + b"/infer",
    ],
    ids=[
        "encoded-traversal",
        "traversal",
        "dot-segments",
        "unicode",
        "invalid-utf8",
        "nul",
        "1000-chars",
        "long-version",
    ],
)
def test_odd_model_names_are_a_json_404(fuzz_gateway: GatewayProcess, path: bytes):
    status, headers, body, _ = raw_exchange(fuzz_gateway.port, http_post(path, DIGITS_BODY))
    assert status == 404
    error_message(status, headers.get("content-type", ""), body, msgpack_request=False)


@pytest.mark.timeout(30)
def test_a_chunked_body_over_the_limit_is_a_413(fuzz_gateway: GatewayProcess):
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 2)) + b"0\r\n\r\n"
    request = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    status, headers, body, _ = raw_exchange(
        fuzz_gateway.port, request + b"Transfer-Encoding: chunked\r\n\r\n" + chunks, timeout_s=10
    )
    assert status == 413
    error_message(status, headers.get("content-type", ""), body, msgpack_request=False)


# -- known bugs: each documents one, until it is fixed ----------------------------------------------------
# They run on a gateway of their own: the 500s they provoke are logged as unhandled, which assert_live refuses.


@pytest.fixture(scope="module")
def scratch_gateway(hub: Hub, tmp_path_factory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("scratch"), fuzz_config(hub)).start()
    yield gateway
    gateway.stop()


def _digits_json(parameters: bytes) -> bytes:
    """The digits request with a ``parameters`` object written as raw JSON (json.dumps cannot write all of them)."""
    return b'{"parameters":' + parameters + b"," + DIGITS_BODY[1:]


def test_a_non_ascii_digit_in_the_header_length_is_a_400(scratch_gateway: GatewayProcess):
    status, _, body = post(
        scratch_gateway.port, "/v2/models/digits/infer", DIGITS_BODY, {"Inference-Header-Content-Length": "\u00b2"}
    )
    assert status == 400, body


def test_a_nan_timeout_parameter_is_a_400(scratch_gateway: GatewayProcess):
    status, _, body = post(scratch_gateway.port, "/v2/models/digits/infer", _digits_json(b'{"timeout":NaN}'), {})
    assert status == 400, body


def test_a_timeout_parameter_too_large_for_a_float_is_a_400(scratch_gateway: GatewayProcess):
    body = _digits_json(b'{"timeout":1' + b"0" * 400 + b"}")
    status, _, reply = post(scratch_gateway.port, "/v2/models/digits/infer", body, {})
    assert status in (200, 400), reply


def test_method_not_allowed_names_the_allowed_methods(scratch_gateway: GatewayProcess):
    status, headers, body, _ = raw_exchange(scratch_gateway.port, b"DELETE /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405
    error_message(status, headers.get("content-type", ""), body, msgpack_request=False)
    assert "GET" in headers.get("allow", ""), "RFC 9110 15.5.6: a 405 must carry Allow"


@pytest.mark.timeout(30)
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="errors aiohttp's HTTP parser raises (line too long, too many headers, raw non-ASCII in the path) are "
    'text/plain, not {"error": ...} as the README promises',
)
@pytest.mark.parametrize(
    "request_bytes",
    [
        http_post(b"/v2/models/digits/infer", DIGITS_BODY, b"X-Long: " + b"a" * 9000),
        http_post(b"/v2/models/digits/infer", DIGITS_BODY, *(b"X-H%d: v" % i for i in range(200))),
        http_post("/v2/models/ü/infer".encode(), DIGITS_BODY),
    ],
    ids=["header-line-over-8KiB", "200-headers", "raw-utf8-path"],
)
def test_errors_from_the_http_parser_are_json_too(scratch_gateway: GatewayProcess, request_bytes: bytes):
    status, headers, body, _ = raw_exchange(scratch_gateway.port, request_bytes)
    assert status >= 400
    error_message(status, headers.get("content-type", ""), body, msgpack_request=False)


@pytest.mark.timeout(60)
def test_a_bytes_element_that_is_not_utf8_is_a_400_and_leaves_the_hub_in(hub: Hub, tmp_path):
    gateway = GatewayProcess(tmp_path, fuzz_config(hub)).start()
    try:
        bad = msgpack.packb(
            {
                "inputs": [
                    {"name": "word", "datatype": "BYTES", "shape": [1, 1], "data": struct.pack("<I", 2) + b"\xff\xfe"}
                ]
            }
        )
        statuses = [
            post(gateway.port, "/v2/models/vocab/infer", bad, {"Content-Type": "application/msgpack"})[0]
            for _ in range(4)
        ]
        after, _, reply = post(gateway.port, "/v2/models/digits/infer", DIGITS_BODY, {})
    finally:
        gateway.stop()
    assert statuses == [400] * 4 and after == 200, (statuses, after, reply[:200])
