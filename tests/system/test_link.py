"""``railgate link``: the delivery schedule under a fake clock, then the proxy over real loopback sockets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import devtools.link as link_module
from devtools import procs
from devtools.link import DeliverySchedule, Link, LinkConfig, add_arguments, read_size

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 5.0


class AlternatingRng(random.Random):
    """Jitter that swings between its maximum and zero: the worst case for reordering.

    Every draw is also announced on ``draws``, so a test can wait until the link has stamped a chunk.
    """

    def __init__(self) -> None:
        super().__init__(0)
        self.count = 0
        self.draws: asyncio.Queue[int] | None = None

    def uniform(self, a: float, b: float) -> float:
        self.count += 1
        if self.draws is not None:
            self.draws.put_nowait(self.count)
        return b if self.count % 2 else a


# --- the pure delivery schedule -----------------------------------------------------------------


def test_delivery_is_arrival_plus_delay_on_an_uncapped_link() -> None:
    schedule = DeliverySchedule(delay_s=0.05)
    assert [schedule.deliver_at(t, 1000) for t in (0.0, 0.01, 1.0)] == pytest.approx([0.05, 0.06, 1.05])


def test_jitter_never_lets_a_chunk_overtake_the_one_before() -> None:
    schedule = DeliverySchedule(delay_s=0.01, jitter_s=0.02, rng=AlternatingRng())
    first = schedule.deliver_at(0.0, 10)  # draws the full 20 ms of jitter
    second = schedule.deliver_at(0.001, 10)  # draws none: would land at 11 ms, before the first
    assert first == pytest.approx(0.03)
    assert second == first


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=50),
    sizes=st.lists(st.integers(min_value=1, max_value=65536), min_size=50, max_size=50),
    delay_s=st.floats(min_value=0, max_value=0.2),
    jitter_s=st.floats(min_value=0, max_value=0.2),
    mbps=st.one_of(st.none(), st.floats(min_value=0.1, max_value=10_000)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_deliveries_are_in_order_and_never_early(gaps, sizes, delay_s, jitter_s, mbps, seed) -> None:
    schedule = DeliverySchedule(delay_s, jitter_s, None if mbps is None else mbps * 1e6, random.Random(seed))
    arrival, previous = 0.0, -1.0
    for gap, size in zip(gaps, sizes, strict=False):
        arrival += gap
        delivery = schedule.deliver_at(arrival, size)
        assert delivery >= previous
        assert delivery >= arrival + delay_s
        previous = delivery


def test_jitter_stays_within_its_bound_when_chunks_are_far_apart() -> None:
    schedule = DeliverySchedule(delay_s=0.05, jitter_s=0.01, rng=random.Random(7))
    for second in range(200):
        assert 0.05 <= schedule.deliver_at(float(second), 100) - second <= 0.06


def test_serialisation_delay_adds_up_for_back_to_back_chunks() -> None:
    # 125,000 bytes at 10 Mbit/s occupy the link for 100 ms each.
    schedule = DeliverySchedule(delay_s=0.05, bits_per_s=10e6)
    deliveries = [schedule.deliver_at(0.0, 125_000) for _ in range(10)]
    assert deliveries == pytest.approx([0.05 + 0.1 * (i + 1) for i in range(10)])


def test_an_idle_link_banks_no_serialisation_credit() -> None:
    schedule = DeliverySchedule(delay_s=0.0, bits_per_s=8e6)  # 1 MB/s
    schedule.deliver_at(0.0, 1_000_000)
    assert schedule.deliver_at(10.0, 1_000_000) == pytest.approx(11.0)


@pytest.mark.parametrize(
    ("mbps", "expected"),
    [(None, 65536), (1.0, 1500), (100.0, 12_500), (10_000.0, 65536)],
)
def test_a_capped_link_reads_about_one_millisecond_of_data_at_a_time(mbps: float | None, expected: int) -> None:
    assert read_size(mbps) == expected


@pytest.mark.parametrize(
    "overrides",
    [{"delay_ms": -1}, {"jitter_ms": -0.5}, {"bandwidth_mbps": 0}, {"listen_port": 70000}, {"max_queued_bytes": 0}],
)
def test_config_rejects_impossible_links(overrides: dict) -> None:
    fields = {"listen_host": "127.0.0.1", "listen_port": 0, "upstream_host": "127.0.0.1", "upstream_port": 1}
    with pytest.raises(ValueError):
        LinkConfig(**(fields | {"delay_ms": 1} | overrides))


# --- command-line flags -------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_build_the_config() -> None:
    args = _parse(
        [
            "--listen",
            "[::1]:0",
            "--upstream",
            "hub.west:8000",
            "--delay-ms",
            "40",
            "--jitter-ms",
            "5",
            "--bandwidth-mbps",
            "100",
        ]
    )
    assert link_module.config_from_args(args) == LinkConfig("::1", 0, "hub.west", 8000, 40.0, 5.0, 100.0)


@pytest.mark.parametrize(
    "bad",
    [
        ["--listen", "8000", "--upstream", "h:1", "--delay-ms", "1"],
        ["--listen", "h:99999", "--upstream", "h:1", "--delay-ms", "1"],
        ["--listen", "h:1", "--upstream", "h:1", "--delay-ms", "-3"],
        ["--listen", "h:1", "--upstream", "h:1", "--delay-ms", "1", "--bandwidth-mbps", "0"],
        ["--listen", "h:1", "--upstream", "h:1"],
    ],
)
def test_bad_flags_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(bad)


# --- the proxy over real sockets ------------------------------------------------------------------


def link_config(upstream_port: int, **path: float | int | None) -> LinkConfig:
    return LinkConfig("127.0.0.1", 0, "127.0.0.1", upstream_port, **{"delay_ms": 0.0} | path)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a counter of the link (it exposes state, not events) until it holds, or fail after TIMEOUT_S."""
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def link_tasks() -> list[asyncio.Task]:
    """Tasks running code from gateway/link.py: after stop() there must be none."""
    return [t for t in asyncio.all_tasks() if t.get_coro().cr_code.co_filename == link_module.__file__]  # type: ignore[union-attr]


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(TIMEOUT_S):
        return await reader.read()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the peer has closed or reset: the read ends with EOF (no data) or a reset."""
    try:
        return await read_to_end(reader) == b""
    except ConnectionResetError:
        return True


class Recorder:
    """An upstream that keeps what each connection sent; at EOF it answers ``got N`` and closes."""

    def __init__(self) -> None:
        self.finished: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: list[bytes] = []
        try:
            while data := await reader.read(65536):
                chunks.append(data)
            writer.write(b"got %d" % sum(map(len, chunks)))
            await writer.drain()
            self.finished.put_nowait(b"".join(chunks))
        except ConnectionError as exc:
            self.finished.put_nowait(exc)
        finally:
            await closed(writer)

    async def next_connection(self) -> bytes | Exception:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.finished.get()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        await closed(writer)


async def closed(writer: asyncio.StreamWriter) -> None:
    """Close, and consume a reset the peer may have sent, so it is not reported as never retrieved."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@asynccontextmanager
async def serving(handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with serving(echo) as port:
        yield port


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    upstream = Recorder()
    async with serving(upstream.handle) as port:
        yield upstream, port


async def connect(link: Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", link.port)


async def test_round_trip_costs_at_least_twice_the_one_way_delay(echo_port: int) -> None:
    async with Link(link_config(echo_port, delay_ms=50)) as link:
        reader, writer = await connect(link)
        started = time.monotonic()
        writer.write(b"ping")
        async with asyncio.timeout(TIMEOUT_S):
            assert await reader.readexactly(4) == b"ping"
        assert time.monotonic() - started >= 0.1
        writer.close()


async def test_jitter_never_reorders_bytes_on_the_wire(recorder: tuple[Recorder, int]) -> None:
    upstream, port = recorder
    rng = AlternatingRng()
    rng.draws = asyncio.Queue()
    async with Link(link_config(port, delay_ms=1, jitter_ms=20), rng=rng) as link:
        _, writer = await connect(link)
        chunks = [b"%05d;" % i for i in range(200)]
        for chunk in chunks:
            writer.write(chunk)
            async with asyncio.timeout(TIMEOUT_S):  # the link has stamped it: one chunk per read
                await rng.draws.get()
        writer.write_eof()
        assert await upstream.next_connection() == b"".join(chunks)
        assert rng.count == len(chunks)
        writer.close()


async def test_a_large_transfer_arrives_byte_identical(echo_port: int) -> None:
    payload = random.Random(1).randbytes(8 * 1024 * 1024)
    async with Link(link_config(echo_port, delay_ms=1, jitter_ms=1)) as link:
        reader, writer = await connect(link)

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(payload), 256 * 1024):
                writer.write(view[start : start + 256 * 1024])
                await writer.drain()
            writer.write_eof()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(send())
            echoed = tasks.create_task(read_to_end(reader))
        assert echoed.result() == payload
        writer.close()


async def test_bandwidth_cap_bounds_the_transfer_time_from_below(recorder: tuple[Recorder, int]) -> None:
    _, port = recorder
    size, mbps = 512 * 1024, 40.0
    async with Link(link_config(port, bandwidth_mbps=mbps)) as link:
        reader, writer = await connect(link)
        started = time.monotonic()
        writer.write(bytes(size))
        writer.write_eof()
        assert await read_to_end(reader) == b"got %d" % size
        assert time.monotonic() - started >= size * 8 / (mbps * 1e6)  # 105 ms
        writer.close()


async def test_half_close_reaches_the_upstream_and_its_reply_comes_back(recorder: tuple[Recorder, int]) -> None:
    upstream, port = recorder
    async with Link(link_config(port, delay_ms=5)) as link:
        reader, writer = await connect(link)
        writer.write(b"request body")
        writer.write_eof()
        assert await upstream.next_connection() == b"request body"  # the upstream saw EOF
        assert await read_to_end(reader) == b"got 12"  # and its reply, then its close, came back
        writer.close()
        await wait_until(lambda: link.open_connections == 0)


async def test_a_client_reset_tears_down_the_upstream_side(recorder: tuple[Recorder, int]) -> None:
    upstream, port = recorder
    async with Link(link_config(port, delay_ms=1)) as link:
        _, writer = await connect(link)
        writer.write(b"partial")
        await wait_until(lambda: link.open_connections == 1)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        writer.transport.abort()
        assert isinstance(await upstream.next_connection(), ConnectionResetError)
        await wait_until(lambda: link.open_connections == 0)


async def test_a_refused_upstream_closes_the_client_promptly() -> None:
    with socket.socket() as unlistened:  # bound but not listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        async with Link(link_config(unlistened.getsockname()[1])) as link:
            reader, writer = await connect(link)
            assert await closed_by_peer(reader)
            writer.close()
            await wait_until(lambda: link.open_connections == 0)


async def test_stop_closes_live_connections_and_leaves_no_tasks(echo_port: int) -> None:
    link = Link(link_config(echo_port, delay_ms=10_000))
    await link.start()
    clients = [await connect(link) for _ in range(3)]
    for _, writer in clients:
        writer.write(b"in flight")
    await wait_until(lambda: link.queued_bytes == 3 * len(b"in flight"))
    assert link_tasks()

    async with asyncio.timeout(2):
        await link.stop()
    assert link_tasks() == []
    assert link.open_connections == 0
    for reader, writer in clients:
        assert await closed_by_peer(reader)
        writer.close()
    await link.stop()  # idempotent


async def test_a_slow_receiver_bounds_the_bytes_the_link_holds() -> None:
    release = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    bound = 1024 * 1024
    async with serving(never_reads) as port, Link(link_config(port, max_queued_bytes=bound)) as link:
        _, writer = await connect(link)

        async def flood() -> None:
            block = bytes(256 * 1024)
            for _ in range(1024):  # 256 MiB at most: far more than all the buffers on the path
                writer.write(block)
                await writer.drain()

        sender = asyncio.create_task(flood())
        try:
            await wait_until(lambda: link.queued_bytes > bound)
            await wait_until(lambda: writer.transport.get_write_buffer_size() > 0)  # the client is pushed back
            assert link.queued_bytes <= bound + read_size(None)
            assert not sender.done()
        finally:
            sender.cancel()
            release.set()
            writer.transport.abort()
        await asyncio.gather(sender, return_exceptions=True)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_the_cli_serves_until_signalled_and_exits_zero(echo_port: int, stop_signal: signal.Signals) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.link",
        *("--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{echo_port}", "--delay-ms", "5"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        **procs.child_options(),
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            line = (await process.stdout.readline()).decode()
        listening = re.fullmatch(
            rf"link listening 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:{echo_port} delay=5ms jitter=0ms bandwidth=unlimited\n",
            line,
        )
        assert listening, line
        reader, writer = await asyncio.open_connection("127.0.0.1", int(listening[1]))
        writer.write(b"hello hub")
        async with asyncio.timeout(TIMEOUT_S):
            assert await reader.readexactly(9) == b"hello hub"
        writer.close()

        process.send_signal(stop_signal)
        async with asyncio.timeout(TIMEOUT_S):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_reading_goes_on_while_earlier_chunks_are_in_flight(echo_port: int) -> None:
    async with Link(link_config(echo_port, delay_ms=10_000)) as link:
        _, writer = await connect(link)

        def queued(total: int) -> Callable[[], bool]:
            return lambda: link.queued_bytes == total

        for sent in range(1, 4):  # a reader that slept for the delay would hold the 2nd chunk for 10 s
            writer.write(b"chunk")
            await wait_until(queued(sent * len(b"chunk")))
        writer.close()
