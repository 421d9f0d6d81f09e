"""Locust users that behave like the gateway's real clients.

``AppClient``         application back ends: v2 JSON and Triton binary tensors, every model, some
                      requests batched by the client, interactive ones with a budget.
``EdgeDevice``        many small devices: msgpack, small tensors (anomaly windows, digits), one
                      reading per period, each device with its own tight X-Latency-Budget-Ms.
``TritonClientUser``  services written against Triton: the unmodified ``tritonclient.http``.

Run it through ``python -m loadtests.run`` (starts a local stack) or directly against a gateway:
``locust -f loadtests/locustfile.py --host http://gateway:8000`` (see docs/loadtests.md).
Knobs are environment variables (``loadtests/settings.py``); ``--shape`` picks a load shape.
Tasks carry tags (app, edge, triton; json, binary, msgpack; the model; tight-budget) for
``--tags`` / ``--exclude-tags``.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# locust imports this file by path; make ``loadtests`` importable from a plain checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tritonclient.http as tritonhttp  # geventhttpclient inside: cooperative under gevent
from locust import User, between, events, tag, task
from locust.contrib.fasthttp import FastHttpUser
from tritonclient.utils import InferenceServerException

from loadtests import shapes, stats
from loadtests.payloads import MODELS, Payload, PayloadPools, error_text, reply_problem, sample_tensor
from loadtests.settings import SHAPE_NAMES, read_settings

SETTINGS = read_settings(argv=sys.argv)
RAILGATE_STATS = stats.RailgateStats()
POOLS = PayloadPools(seed=SETTINGS.seed)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Read from sys.argv when this file is imported (locust picks the shape class then); declared
    # here so locust accepts it and shows it in --help.
    parser.add_argument(
        "--shape",
        choices=SHAPE_NAMES,
        default=SETTINGS.shape,
        include_in_web_ui=False,
        help="load shape (default RAILGATE_SHAPE or none: plain --users/--spawn-rate/--run-time)",
    )
    parser.add_argument(
        "--shape-scale",
        type=float,
        default=SETTINGS.shape_scale,
        help="multiplies every duration of the shape (default RAILGATE_SHAPE_SCALE or 1)",
    )


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    stats.attach(environment, RAILGATE_STATS)
    if environment.web_ui is not None:
        _add_web_routes(environment.web_ui.app)


def _add_web_routes(app: Any) -> None:
    """The custom tables as CSV while the web UI runs: /railgate/backends.csv and /railgate/routes.csv."""

    @app.route("/railgate/backends.csv")
    def _backends_csv() -> tuple[str, int, dict[str, str]]:
        text = stats.csv_text(stats.BACKEND_COLUMNS, stats.backend_rows(RAILGATE_STATS))
        return text, 200, {"Content-Type": "text/csv"}

    @app.route("/railgate/routes.csv")
    def _routes_csv() -> tuple[str, int, dict[str, str]]:
        text = stats.csv_text(stats.ROUTE_COLUMNS, stats.route_rows(RAILGATE_STATS))
        return text, 200, {"Content-Type": "text/csv"}


def _post(user: GatewayHttpUser, payload: Payload, budget_ms: float | None, send_late_ms: float | None = None) -> None:
    """Send one prepared request and judge the reply (status, outputs, deadline). ``send_late_ms``: how
    late the load generator is sending it against its own schedule (reported, never a failure)."""
    headers = dict(payload.headers)
    if budget_ms:
        headers["X-Latency-Budget-Ms"] = f"{budget_ms:g}"
    context: dict[str, Any] = {"model": payload.model, "budget_ms": budget_ms}
    if send_late_ms is not None:
        context["send_late_ms"] = send_late_ms
    body: Any = payload.body  # bytes go out as they are; locust's type hint says str
    with user.client.post(
        payload.path, data=body, headers=headers, name=payload.name, catch_response=True, context=context
    ) as reply:
        status = reply.status_code or 0
        content = (reply.content or b"") if status else b""
        reply_headers = reply.headers or {}
        problem = reply_problem(payload, reply_headers, content) if status == 200 else None
        error = None
        if status == 0:
            error = f"{type(reply.error).__name__}: {reply.error}"
        elif status != 200:
            error = error_text(reply_headers, content)
        elapsed_ms = reply.request_meta["response_time"]
        gateway_ms = stats.header_ms(reply_headers)
        failure = stats.judge(status, elapsed_ms, budget_ms, problem=problem, error=error, gateway_ms=gateway_ms)
        late = stats.generator_late_ms(status, elapsed_ms, budget_ms, gateway_ms)
        reply.request_meta["context"]["gateway_ms"] = gateway_ms
        if late is not None:
            reply.request_meta["context"]["generator_late_ms"] = late
        if failure is None:
            reply.success()
        else:
            reply.failure(failure)


class GatewayHttpUser(FastHttpUser):
    """FastHttpUser that takes every HTTP status as a reply, for ``_post`` to judge."""

    abstract = True

    def on_start(self) -> None:
        # geventhttpclient turns a status outside this set into an exception whose debug log decodes
        # the body as UTF-8; a msgpack error body is not, and the request would vanish from the
        # stats as a task exception. Every status comes back as a reply instead.
        self.client.client.valid_response_codes = frozenset(range(100, 600))  # type: ignore[misc]


class AppClient(GatewayHttpUser):
    """An application back end calling the gateway for its users: v2 JSON and binary tensors."""

    wait_time = between(0.05, 0.25)
    network_timeout = 30.0
    connection_timeout = 5.0

    def _send(self, model: str, encoding: str, rows: int = 1, budget_ms: float | None = None) -> None:
        _post(self, POOLS.pick(model, encoding, rows), budget_ms)

    @property
    def _interactive_ms(self) -> float | None:
        return SETTINGS.app_budget_ms or None

    @tag("app", "json", "digits")
    @task(4)
    def digits_json(self) -> None:
        self._send("digits", "json", budget_ms=self._interactive_ms)

    @tag("app", "binary", "digits")
    @task(1)
    def digits_batch_binary(self) -> None:
        self._send("digits", "binary", rows=8)  # a back end that batches its own users first

    @tag("app", "json", "anomaly")
    @task(1)
    def anomaly_json(self) -> None:
        self._send("anomaly", "json")

    @tag("app", "json", "vocab")
    @task(2)
    def vocab_json(self) -> None:
        self._send("vocab", "json", budget_ms=self._interactive_ms)

    @tag("app", "binary", "vocab")
    @task(1)
    def vocab_binary(self) -> None:
        self._send("vocab", "binary")

    @tag("app", "binary", "vision")
    @task(2)
    def vision_binary(self) -> None:
        self._send("vision", "binary")

    @tag("app", "json", "vision")
    @task(1)
    def vision_json(self) -> None:
        self._send("vision", "json")  # 12,288 numbers as JSON text: the heaviest body clients send


class EdgeDevice(GatewayHttpUser):
    """One device on the edge: a small msgpack request every period, under its own tight budget."""

    network_timeout = 10.0
    connection_timeout = 2.0
    _serial = itertools.count()

    def on_start(self) -> None:
        super().on_start()
        number = next(EdgeDevice._serial)
        budgets = SETTINGS.edge_budgets_ms
        self.budget_ms = budgets[number % len(budgets)]  # a fleet mixes device generations
        self.rng = random.Random(SETTINGS.seed * 1_000_003 + number)
        # Devices keep their own clocks: each takes its readings at its own phase of the period.
        time.sleep(self.rng.uniform(0.0, SETTINGS.edge_period_s))
        self.next_reading = time.monotonic()

    def wait_time(self) -> float:
        """Until this device's next reading, on its own clock (a late reply shortens the wait, as
        constant_pacing's would). Not constant_pacing: that anchors every user to its spawn tick, so
        a fleet spawned in one tick fired in lockstep, all devices within ~5 ms every period, and the
        bursts queued in the load generator and in the gateway (batches of 3-4, misses at 10 ms)."""
        self.next_reading += SETTINGS.edge_period_s
        return max(0.0, self.next_reading - time.monotonic())

    def _send_late_ms(self) -> float:
        """How late this reading goes out against the device's own clock (the generator's lateness)."""
        return max(0.0, (time.monotonic() - self.next_reading) * 1000)

    @tag("edge", "msgpack", "anomaly", "tight-budget")
    @task(4)
    def anomaly_window(self) -> None:
        _post(self, POOLS.pick("anomaly", "msgpack", rng=self.rng), self.budget_ms, self._send_late_ms())

    @tag("edge", "msgpack", "digits", "tight-budget")
    @task(1)
    def digit_snapshot(self) -> None:
        _post(self, POOLS.pick("digits", "msgpack", rng=self.rng), self.budget_ms, self._send_late_ms())


# -- tritonclient -----------------------------------------------------------------------------------

RAILGATE_HEADERS = ("X-Served-By", "X-Batch-Size", "X-Route-Reason", "X-Queue-Ms", "X-Backend-Ms", "X-Gateway-Ms")


@dataclass(slots=True)
class TritonReply:
    """What the HTTP reply under a tritonclient call said: status, railgate's headers, body length."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    length: int = 0


class HeaderKeepingClient(tritonhttp.InferenceServerClient):
    """``tritonclient.http``'s client, keeping the last reply's status and railgate headers.

    ``infer`` returns an ``InferResult`` without the HTTP headers, so X-Served-By and the rest are
    read in ``_post``, the one method every POST goes through (private, so pinned by the test that
    runs this locustfile). One client per user, one call at a time: ``last_reply`` is that call's.
    """

    last_reply: TritonReply | None = None

    def _post(self, request_uri, request_body, headers, query_params):  # type: ignore[no-untyped-def]
        response = super()._post(request_uri, request_body, headers, query_params)
        kept = {name: value for name in RAILGATE_HEADERS if (value := response.get(name)) is not None}
        self.last_reply = TritonReply(response.status_code, kept, int(response.get("Content-Length") or 0))
        return response


@dataclass(frozen=True, slots=True)
class TritonRequest:
    """Prepared tritonclient inputs and outputs (reused across calls: they are read-only once set)."""

    model: str
    inputs: list[tritonhttp.InferInput]
    outputs: list[tritonhttp.InferRequestedOutput]
    rows: int
    name: str


def _triton_requests(model: str, binary: bool, count: int = 16, rows: int = 1) -> list[TritonRequest]:
    spec = MODELS[model]
    rng = np.random.default_rng([SETTINGS.seed, 7, sorted(MODELS).index(model), int(binary)])
    encoding = "binary" if binary else "json"
    built = []
    for _ in range(count):
        tensor = sample_tensor(model, rows, rng)
        infer_input = tritonhttp.InferInput(spec.input, list(tensor.shape), spec.datatype)
        infer_input.set_data_from_numpy(tensor, binary_data=binary)
        outputs = [tritonhttp.InferRequestedOutput(name, binary_data=binary) for name in spec.outputs]
        built.append(TritonRequest(model, [infer_input], outputs, rows, f"{model} [tritonclient {encoding}]"))
    return built


class TritonClientUser(User):
    """A service written against Triton, pointed at the gateway: unmodified ``tritonclient.http``.

    tritonclient's HTTP client is built on geventhttpclient, so under locust's gevent it yields on
    every socket operation like FastHttpUser does; its calls are timed here and reported with
    ``events.request.fire``.
    """

    wait_time = between(0.05, 0.25)
    requests: dict[tuple[str, bool], list[TritonRequest]] = {}

    def on_start(self) -> None:
        host = (self.host or "").rstrip("/")
        ssl = host.startswith("https://")
        self.client = HeaderKeepingClient(
            host.split("://", 1)[-1], ssl=ssl, connection_timeout=5.0, network_timeout=30.0
        )

    def on_stop(self) -> None:
        self.client.close()

    def _infer(self, model: str, binary: bool, budget_ms: float | None = None, as_timeout: bool = False) -> None:
        request = random.choice(self.requests[(model, binary)])
        headers = {"X-Latency-Budget-Ms": f"{budget_ms:g}"} if budget_ms and not as_timeout else None
        timeout_us = int(budget_ms * 1000) if budget_ms and as_timeout else None
        self.client.last_reply = None
        start_time = time.time()
        start = time.perf_counter()
        status, problem, error = 200, None, None
        try:
            result = self.client.infer(
                request.model, request.inputs, outputs=request.outputs, headers=headers, timeout=timeout_us
            )
            for output in request.outputs:
                array = result.as_numpy(output.name())
                if array is None or array.shape[0] != request.rows:
                    problem = f"output {output.name()!r} missing or without {request.rows} rows"
                    break
        except InferenceServerException as exc:
            status = int(exc.status()) if (exc.status() or "").isdigit() else 0
            error = exc.message()
        except Exception as exc:  # socket errors and timeouts from geventhttpclient
            status, error = 0, f"{type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - start) * 1000
        reply = self.client.last_reply or TritonReply(status)
        gateway_ms = stats.header_ms(reply.headers)
        failure = stats.judge(status, elapsed_ms, budget_ms, problem=problem, error=error, gateway_ms=gateway_ms)
        context: dict[str, Any] = {"model": request.model, "budget_ms": budget_ms, "gateway_ms": gateway_ms}
        late = stats.generator_late_ms(status, elapsed_ms, budget_ms, gateway_ms)
        if late is not None:
            context["generator_late_ms"] = late
        self.environment.events.request.fire(
            request_type="TRITON",
            name=request.name,
            response_time=elapsed_ms,
            response_length=reply.length,
            response=reply,
            context=context,
            exception=failure,
            start_time=start_time,
            url=f"{self.host}/v2/models/{request.model}/infer",
        )

    @tag("triton", "binary", "digits")
    @task(3)
    def digits_binary(self) -> None:
        self._infer("digits", binary=True, budget_ms=SETTINGS.app_budget_ms or None, as_timeout=True)

    @tag("triton", "binary", "vision")
    @task(2)
    def vision_binary(self) -> None:
        self._infer("vision", binary=True)

    @tag("triton", "json", "vocab")
    @task(1)
    def vocab_json(self) -> None:
        self._infer("vocab", binary=False)

    @tag("triton", "json", "anomaly")
    @task(1)
    def anomaly_json(self) -> None:
        self._infer("anomaly", binary=False, budget_ms=SETTINGS.app_budget_ms or None)


def _prepare() -> None:
    """Build every payload the users will send, now, so no request pays for building one."""
    for model, encoding, rows in [
        ("digits", "json", 1),
        ("digits", "binary", 8),
        ("digits", "msgpack", 1),
        ("anomaly", "json", 1),
        ("anomaly", "msgpack", 1),
        ("vocab", "json", 1),
        ("vocab", "binary", 1),
        ("vision", "binary", 1),
        ("vision", "json", 1),
    ]:
        POOLS.get(model, encoding, rows)
    for model, binary in [("digits", True), ("vision", True), ("vocab", False), ("anomaly", False)]:
        TritonClientUser.requests[(model, binary)] = _triton_requests(model, binary)
    for cls in (AppClient, EdgeDevice, TritonClientUser):
        cls.weight = SETTINGS.weights()[cls.__name__]
        cls.abstract = cls.weight == 0  # a weight of 0 leaves the class out of the test entirely


_prepare()

# Exactly one LoadTestShape (or none) in this module's namespace: locust runs the first it finds.
if SETTINGS.shape != "none":
    Shape = shapes.shape_for(SETTINGS.shape)
