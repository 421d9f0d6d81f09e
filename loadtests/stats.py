"""What locust does not count on its own: who served each request, why, and whether it was in time.

Every inference request's outcome is judged once (``judge``): a 200 the gateway itself took longer
than the request's budget to make (its ``X-Gateway-Ms``; the client's clock only where that header is
absent) is a failure ("deadline miss"), like the 504 the gateway gives when it runs out of budget
itself. A reply the gateway made in time that the load generator read late is no miss: that lateness
(the client's time less the gateway's) is the load generator's own, tallied apart
(``generator_late``) and printed when the test ends. Failures carry a kind (deadline, overload,
error) so a report can tell a gateway that is slow from one that is wrong.

``RailgateStats`` tallies requests per (``X-Served-By``, model) and per ``X-Route-Reason``, with
latency percentiles from a histogram rounded like locust's own. Apart from the outcomes it splits each
reply's time in two: the gateway's own (``X-Gateway-Ms``) and the rest (``outside``: the client's time
less the gateway's: the load generator's scheduling, its HTTP client, the sockets), and it keeps how
late the load generator sent what it meant to send on a schedule (an edge device's reading:
``send_late``). ``attach`` wires it to locust's events and writes ``<csv prefix>_backends.csv``,
``<csv prefix>_routes.csv`` and ``<csv prefix>_lateness.csv`` when a test stops.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
DEADLINE = "deadline"  # a 504 from the gateway, or a reply later than the request's budget
OVERLOAD = "overload"  # 429 (queue full) or 503 (no healthy backend): the gateway shed the request
ERROR = "error"  # anything else: wrong status, bad reply, connection failure
KINDS = (OK, DEADLINE, OVERLOAD, ERROR)
NO_HEADER = "(none)"  # the reply carried no X-Served-By / X-Route-Reason: it failed before a backend
PERCENTILES = (0.5, 0.9, 0.95, 0.99)


class Failure(Exception):
    """A failed request as locust records it; ``repr`` is the message, so locust's tables read cleanly."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return self.message


def judge(
    status: int,
    elapsed_ms: float,
    budget_ms: float | None,
    *,
    problem: str | None = None,
    error: str | None = None,
    gateway_ms: float | None = None,
) -> Failure | None:
    """The failure a reply amounts to, or None when it is a success.

    ``status`` 0 means no HTTP reply at all (``error`` says why); ``problem`` is what is wrong with a
    200's body; ``error`` is the gateway's ``{"error": ...}`` message for any other status;
    ``gateway_ms`` is the gateway's own time for the request (``X-Gateway-Ms``), if it said.
    """
    if status == 0:
        return Failure(ERROR, f"no reply: {error or 'connection failed'}")
    if status == 200:
        if problem is not None:
            return Failure(ERROR, f"bad reply: {problem}")
        if budget_ms is not None and gateway_ms is not None and gateway_ms > budget_ms:
            return Failure(
                DEADLINE, f"deadline miss: the gateway took {math.ceil(gateway_ms)} ms > budget {budget_ms:g} ms"
            )
        if budget_ms is not None and gateway_ms is None and elapsed_ms > budget_ms:
            return Failure(DEADLINE, f"deadline miss: {math.ceil(elapsed_ms)} ms > budget {budget_ms:g} ms")
        return None
    if status == 504:
        budget = f"budget {budget_ms:g} ms" if budget_ms is not None else "the gateway's default budget"
        return Failure(DEADLINE, f"deadline miss: 504 from the gateway ({budget})")
    kind = OVERLOAD if status in (429, 503) else ERROR
    return Failure(kind, f"HTTP {status}: {error or 'no error message'}")


def generator_late_ms(
    status: int, elapsed_ms: float, budget_ms: float | None, gateway_ms: float | None
) -> float | None:
    """For a reply the gateway made within the budget that the load generator saw past it: the time
    spent outside the gateway (the generator's scheduling, the network). None for every other reply."""
    if status != 200 or budget_ms is None or gateway_ms is None:
        return None
    if gateway_ms > budget_ms or elapsed_ms <= budget_ms:
        return None
    return elapsed_ms - gateway_ms


def header_ms(headers: Mapping[str, str] | None, name: str = "X-Gateway-Ms") -> float | None:
    """A millisecond figure from a reply header, None when absent or unreadable."""
    try:
        return float((headers or {})[name])
    except (KeyError, TypeError, ValueError):
        return None


def failure_kind(exception: BaseException | str | None) -> str:
    if exception is None:
        return OK
    return getattr(exception, "kind", ERROR)


# -- latency histogram -----------------------------------------------------------------------------


def latency_bucket(ms: float) -> int:
    """``ms`` rounded as locust rounds response times: exact below 100, then 2 significant digits."""
    if ms < 100:
        return round(ms)
    digits = -1 if ms < 1000 else -2 if ms < 10000 else -3
    return int(round(ms, digits))


@dataclass(slots=True)
class LatencyHistogram:
    """Counts per rounded millisecond: bounded memory for any run length, mergeable across workers."""

    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    total: int = 0
    sum_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.counts[latency_bucket(ms)] += 1
        self.total += 1
        self.sum_ms += ms
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float:
        """The smallest bucket at or below which at least ``q`` of the samples lie (0 when empty)."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return float(bucket)
        return self.max_ms

    @property
    def mean_ms(self) -> float:
        return self.sum_ms / self.total if self.total else 0.0

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] += count
        self.total += other.total
        self.sum_ms += other.sum_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)

    def to_wire(self) -> dict[str, Any]:
        # Pairs, not a dict: locust's master unpacks worker reports with msgpack, which wants str keys.
        return {
            "counts": sorted(self.counts.items()),
            "total": self.total,
            "sum_ms": self.sum_ms,
            "min_ms": None if math.isinf(self.min_ms) else self.min_ms,
            "max_ms": self.max_ms,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        histogram = cls(total=data["total"], sum_ms=data["sum_ms"], max_ms=data["max_ms"])
        histogram.min_ms = math.inf if data["min_ms"] is None else data["min_ms"]
        for bucket, count in data["counts"]:
            histogram.counts[bucket] += count
        return histogram


@dataclass(slots=True)
class Tally:
    """Requests, their outcomes and latencies, for one backend, model or route reason."""

    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    batch_rows: int = 0  # sum of X-Batch-Size over replies that carried it
    batched: int = 0  # replies that carried X-Batch-Size
    backends: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # for route reasons

    @property
    def requests(self) -> int:
        return self.latency.total

    @property
    def failures(self) -> int:
        return self.requests - self.outcomes[OK]

    def add(self, ms: float, kind: str, batch_size: int, backend: str) -> None:
        self.latency.add(ms)
        self.outcomes[kind] += 1
        if batch_size > 0:
            self.batch_rows += batch_size
            self.batched += 1
        self.backends[backend] += 1

    def merge(self, other: Tally) -> None:
        self.latency.merge(other.latency)
        for kind, count in other.outcomes.items():
            self.outcomes[kind] += count
        self.batch_rows += other.batch_rows
        self.batched += other.batched
        for backend, count in other.backends.items():
            self.backends[backend] += count

    def to_wire(self) -> dict[str, Any]:
        return {
            "latency": self.latency.to_wire(),
            "outcomes": dict(self.outcomes),
            "batch_rows": self.batch_rows,
            "batched": self.batched,
            "backends": dict(self.backends),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Tally:
        tally = cls(LatencyHistogram.from_wire(data["latency"]), batch_rows=data["batch_rows"], batched=data["batched"])
        for kind, count in data["outcomes"].items():
            tally.outcomes[kind] = tally.outcomes.get(kind, 0) + count
        for backend, count in data["backends"].items():
            tally.backends[backend] += count
        return tally


# The time splits kept apart from the outcomes (``<prefix>_lateness.csv``, one row each).
LATENESS = {
    "gateway": "the gateway's own time (X-Gateway-Ms), every reply that carried it",
    "outside": "client time less the gateway's: load generator, HTTP client, sockets",
    "generator_late": "outside time of replies the gateway made in time and the client saw late (no miss)",
    "send_late": "how late the load generator sent a scheduled request (an edge device's reading)",
}


# One row per failed request (``<prefix>_failed.csv``): when it ended (Unix seconds, to line it up with
# the machine's own record of that moment), what it was, and where the gateway says its time went.
FAILED_COLUMNS = [
    "End (unix s)", "Name", "Client ms", "Kind", "Error",
    "X-Served-By", "X-Route-Reason", "X-Queue-Ms", "X-Backend-Ms", "X-Gateway-Ms",
]  # fmt: skip
MAX_FAILED_ROWS = 1000  # the first ones: a run that fails everything keeps bounded memory


class RailgateStats:
    """Tallies per (backend, model) and per route reason; pure: fed by ``record``, read by the CSV writers."""

    def __init__(self) -> None:
        self.by_backend: dict[tuple[str, str], Tally] = defaultdict(Tally)
        self.by_route: dict[str, Tally] = defaultdict(Tally)
        self.failed: list[list[Any]] = []  # FAILED_COLUMNS, at most MAX_FAILED_ROWS
        # Each reply's time split between the gateway and the rest, and the generator's own lateness.
        self.lateness: dict[str, LatencyHistogram] = {name: LatencyHistogram() for name in LATENESS}

    @property
    def generator_late(self) -> LatencyHistogram:
        """Replies the gateway made in time and the load generator read late: time outside the gateway."""
        return self.lateness["generator_late"]

    def reset(self) -> None:
        self.by_backend.clear()
        self.by_route.clear()
        self.failed = []
        self.lateness = {name: LatencyHistogram() for name in LATENESS}

    def record_generator_late(self, ms: float) -> None:
        self.lateness["generator_late"].add(ms)

    def record_split(self, elapsed_ms: float, gateway_ms: float | None) -> None:
        """One reply's time: the gateway's share (when it said) and the rest."""
        if gateway_ms is not None:
            self.lateness["gateway"].add(gateway_ms)
            self.lateness["outside"].add(max(0.0, elapsed_ms - gateway_ms))

    def record_send_late(self, ms: float) -> None:
        self.lateness["send_late"].add(max(0.0, ms))

    def generator_late_line(self) -> str:
        late = self.generator_late
        if not late.total:
            return "load generator lateness: none (every reply made in time was read in time)"
        return (
            f"load generator lateness: {late.total} replies the gateway made within their budget were read "
            f"late by the load generator (not deadline misses): time outside the gateway p50 "
            f"{late.percentile(0.5):g} ms, p99 {late.percentile(0.99):g} ms, max {late.max_ms:.1f} ms"
        )

    def lateness_lines(self) -> list[str]:
        """The time splits, one line each (printed when the test ends)."""
        lines = [self.generator_late_line()]
        for name in ("gateway", "outside", "send_late"):
            h = self.lateness[name]
            if h.total:
                lines.append(
                    f"{name} ms ({LATENESS[name]}): {h.total} samples, p50 {h.percentile(0.5):g}, "
                    f"p99 {h.percentile(0.99):g}, max {h.max_ms:.1f}"
                )
        return lines

    def record(self, *, backend: str, model: str, route: str, ms: float, kind: str, batch_size: int = 0) -> None:
        self.by_backend[(backend, model)].add(ms, kind, batch_size, backend)
        self.by_route[route].add(ms, kind, batch_size, backend)

    def record_reply(self, model: str, headers: Mapping[str, str] | None, ms: float, kind: str) -> None:
        """Record one request from its reply headers (None when no reply came)."""
        headers = headers or {}
        try:
            batch_size = int(headers.get("X-Batch-Size") or 0)
        except ValueError:
            batch_size = 0
        self.record(
            backend=headers.get("X-Served-By") or NO_HEADER,
            model=model,
            route=headers.get("X-Route-Reason") or NO_HEADER,
            ms=ms,
            kind=kind,
            batch_size=batch_size,
        )

    def record_failed(
        self, *, end_s: float, name: str, ms: float, exception: BaseException | str, headers: Mapping[str, str] | None
    ) -> None:
        """One failed request's row, while fewer than ``MAX_FAILED_ROWS`` are kept."""
        if len(self.failed) >= MAX_FAILED_ROWS:
            return
        headers = headers or {}
        row = [round(end_s, 4), name, round(ms, 2), failure_kind(exception), str(exception)]
        self.failed.append(row + [headers.get(column, "") for column in FAILED_COLUMNS[5:]])

    @property
    def total(self) -> int:
        return sum(t.requests for t in self.by_route.values())

    def backend_totals(self) -> dict[str, Tally]:
        totals: dict[str, Tally] = defaultdict(Tally)
        for (backend, _), tally in self.by_backend.items():
            totals[backend].merge(tally)
        return dict(totals)

    def to_wire(self) -> dict[str, Any]:
        return {
            "by_backend": [[b, m, t.to_wire()] for (b, m), t in self.by_backend.items()],
            "by_route": [[r, t.to_wire()] for r, t in self.by_route.items()],
            "lateness": [[name, h.to_wire()] for name, h in self.lateness.items()],
            "failed": self.failed,
        }

    def merge_wire(self, data: Mapping[str, Any]) -> None:
        for backend, model, tally in data["by_backend"]:
            self.by_backend[(backend, model)].merge(Tally.from_wire(tally))
        for route, tally in data["by_route"]:
            self.by_route[route].merge(Tally.from_wire(tally))
        for name, histogram in data.get("lateness", []):
            if name in self.lateness:
                self.lateness[name].merge(LatencyHistogram.from_wire(histogram))
        self.failed.extend(data.get("failed", [])[: max(0, MAX_FAILED_ROWS - len(self.failed))])


# -- CSV -------------------------------------------------------------------------------------------

_LATENCY_COLUMNS = ["Average (ms)", "Min (ms)", "50%", "90%", "95%", "99%", "Max (ms)"]
_OUTCOME_COLUMNS = ["Failures", "Deadline misses", "Overload", "Errors"]
BACKEND_COLUMNS = ["Backend", "Model", "Requests", "Share %", *_OUTCOME_COLUMNS, "Mean batch size", *_LATENCY_COLUMNS]
ROUTE_COLUMNS = ["Route reason", "Requests", "Share %", "Backends", *_OUTCOME_COLUMNS, *_LATENCY_COLUMNS]


def _row_values(tally: Tally, total: int) -> tuple[list[Any], list[Any]]:
    share = round(100 * tally.requests / total, 2) if total else 0.0
    o = tally.outcomes
    outcomes = [tally.requests, share, tally.failures, o[DEADLINE], o[OVERLOAD], o[ERROR]]
    h = tally.latency
    latency = [round(h.mean_ms, 2), round(0.0 if math.isinf(h.min_ms) else h.min_ms, 2)]
    latency += [h.percentile(q) for q in PERCENTILES] + [round(h.max_ms, 2)]
    return outcomes, latency


def backend_rows(stats: RailgateStats) -> list[list[Any]]:
    """Per backend: a row per model, then its "All" row; backends in descending request count."""
    total = stats.total
    rows: list[list[Any]] = []
    totals = stats.backend_totals()
    for backend in sorted(totals, key=lambda b: (-totals[b].requests, b)):
        models = sorted(m for b, m in stats.by_backend if b == backend)
        for model, tally in [(m, stats.by_backend[(backend, m)]) for m in models] + [("All", totals[backend])]:
            outcomes, latency = _row_values(tally, total)
            mean_batch = round(tally.batch_rows / tally.batched, 2) if tally.batched else ""
            rows.append([backend, model, outcomes[0], outcomes[1], *outcomes[2:], mean_batch, *latency])
    return rows


def route_rows(stats: RailgateStats) -> list[list[Any]]:
    total = stats.total
    rows = []
    for route, tally in sorted(stats.by_route.items(), key=lambda item: (-item[1].requests, item[0])):
        outcomes, latency = _row_values(tally, total)
        backends = " ".join(f"{b}:{n}" for b, n in sorted(tally.backends.items(), key=lambda x: -x[1]))
        rows.append([route, outcomes[0], outcomes[1], backends, *outcomes[2:], *latency])
    return rows


LATENESS_COLUMNS = ["Measure", "Meaning", "Samples", *_LATENCY_COLUMNS]


def lateness_rows(stats: RailgateStats) -> list[list[Any]]:
    rows = []
    for name, meaning in LATENESS.items():
        h = stats.lateness[name]
        latency = [round(h.mean_ms, 2), round(0.0 if math.isinf(h.min_ms) else h.min_ms, 2)]
        rows.append([name, meaning, h.total, *latency, *[h.percentile(q) for q in PERCENTILES], round(h.max_ms, 2)])
    return rows


def csv_text(columns: list[str], rows: Iterable[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def write_csvs(stats: RailgateStats, prefix: str | Path) -> tuple[Path, Path, Path]:
    """``<prefix>_backends.csv``, ``<prefix>_routes.csv`` and ``<prefix>_lateness.csv``, next to locust's
    own (returned), and ``<prefix>_failed.csv``."""
    backends = Path(f"{prefix}_backends.csv")
    routes = Path(f"{prefix}_routes.csv")
    lateness = Path(f"{prefix}_lateness.csv")
    backends.parent.mkdir(parents=True, exist_ok=True)
    backends.write_text(csv_text(BACKEND_COLUMNS, backend_rows(stats)))
    routes.write_text(csv_text(ROUTE_COLUMNS, route_rows(stats)))
    lateness.write_text(csv_text(LATENESS_COLUMNS, lateness_rows(stats)))
    Path(f"{prefix}_failed.csv").write_text(csv_text(FAILED_COLUMNS, sorted(stats.failed)))
    return backends, routes, lateness


# -- locust wiring ----------------------------------------------------------------------------------


def attach(environment: Any, stats: RailgateStats) -> None:
    """Feed ``stats`` from locust's request event and write its CSVs when the test stops.

    Only requests whose ``context`` names a ``model`` are inference requests and counted. Under
    ``--master``/``--worker`` each worker ships its tallies with its regular report and starts afresh;
    the master merges them and writes the CSVs. ``quit`` carries no environment, hence the closure.
    """
    events = environment.events

    @events.request.add_listener
    def _on_request(
        response_time: float, context: dict | None = None, response: Any = None, exception=None, name: str = "", **_
    ):
        model = (context or {}).get("model")
        if model is None:
            return
        headers = getattr(response, "headers", None)
        stats.record_reply(model, headers, response_time, failure_kind(exception))
        if exception is not None:
            stats.record_failed(end_s=time.time(), name=name, ms=response_time, exception=exception, headers=headers)
        late = (context or {}).get("generator_late_ms")
        if late is not None:
            stats.record_generator_late(late)
        stats.record_split(response_time, (context or {}).get("gateway_ms"))
        send_late = (context or {}).get("send_late_ms")
        if send_late is not None:
            stats.record_send_late(send_late)

    @events.test_start.add_listener
    def _on_test_start(**_: Any) -> None:
        stats.reset()

    @events.reset_stats.add_listener
    def _on_reset_stats(**_: Any) -> None:
        stats.reset()

    @events.report_to_master.add_listener
    def _on_report_to_master(data: dict, **_: Any) -> None:
        data["railgate"] = stats.to_wire()
        stats.reset()

    @events.worker_report.add_listener
    def _on_worker_report(data: dict, **_: Any) -> None:
        if "railgate" in data:
            stats.merge_wire(data["railgate"])

    def _write(**_: Any) -> None:
        options = environment.parsed_options
        prefix = getattr(options, "csv_prefix", None) if options is not None else None
        if prefix and not getattr(options, "worker", False):
            write_csvs(stats, prefix)

    # At test stop for the web UI (a test can stop without the process exiting), and again when
    # the process exits: a master hears its workers' last reports only after the test stopped.
    events.test_stop.add_listener(_write)
    events.quit.add_listener(_write)

    @events.quitting.add_listener
    def _say_generator_lateness(**_: Any) -> None:
        options = environment.parsed_options
        if options is None or not getattr(options, "worker", False):
            print("\n".join(stats.lateness_lines()), flush=True)
