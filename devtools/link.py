"""``railgate link``: a user-space TCP proxy that emulates a long-haul backbone link to a hub.

These machines have no netem, so wide-area delay is emulated here. Each direction of each
connection is a :class:`_Pipe`: a reader stamps every chunk with its delivery time and queues it,
and a writer sleeps until that time and writes. The reader never sleeps for the delay, so bytes
keep flowing while earlier chunks are in flight; only the bandwidth cap and the queue bound
(backpressure) slow it down.

Timing is decided by :class:`DeliverySchedule`, a pure object (arrival time and size in, delivery
time out) so the link's behaviour is testable with a fake clock. Timers have about 1 ms
granularity: a chunk is never delivered early, and at most about 1 ms late.

Internal to the gateway's tooling: only the CLI (``railgate link``) is a public surface.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Default bound on the bytes one direction holds in flight before it stops reading its sender."""

_MAX_SEGMENT = 64 * 1024
_MIN_SEGMENT = 1500
# Timers fire on a ~1 ms grid (epoll and libuv both): sleeping less than that only spins.
_TIMER_GRANULARITY_S = 0.001


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Where the link listens, which upstream it reaches, and the path it emulates (per direction)."""

    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    delay_ms: float
    jitter_ms: float = 0.0
    bandwidth_mbps: float | None = None
    max_queued_bytes: int = MAX_QUEUED_BYTES

    def __post_init__(self) -> None:
        for name in ("listen_port", "upstream_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"delay and jitter must be >= 0 ms, got delay={self.delay_ms} jitter={self.jitter_ms}")
        if self.bandwidth_mbps is not None and not self.bandwidth_mbps > 0:
            raise ValueError(f"bandwidth must be > 0 Mbit/s (or None for unlimited), got {self.bandwidth_mbps}")
        if self.max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be >= 1, got {self.max_queued_bytes}")

    def describe(self) -> str:
        bandwidth = "unlimited" if self.bandwidth_mbps is None else f"{self.bandwidth_mbps:g}Mbit/s"
        return f"delay={self.delay_ms:g}ms jitter={self.jitter_ms:g}ms bandwidth={bandwidth}"


def read_size(bandwidth_mbps: float | None) -> int:
    """Largest chunk one read takes: about 1 ms of link time, so a capped link is not store-and-forward
    of 64 KiB blocks (first-byte latency stays near one packet's serialisation, as on a real path)."""
    if bandwidth_mbps is None:
        return _MAX_SEGMENT
    return max(_MIN_SEGMENT, min(_MAX_SEGMENT, int(bandwidth_mbps * 1e6 / 8 / 1000)))


@dataclass(slots=True)
class DeliverySchedule:
    """When each chunk of one direction reaches the far end.

    A chunk is serialised onto the link once the link is free (``size * 8 / bandwidth`` seconds),
    then propagates for ``delay + uniform(0, jitter)``. A delivery never precedes the previous
    one: jitter stretches the gaps between chunks but never reorders bytes, as on a TCP path.
    An idle link banks no credit: serialisation starts at arrival or when the link frees up.
    """

    delay_s: float
    jitter_s: float = 0.0
    bits_per_s: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    link_free_at: float = -math.inf
    last_delivery: float = -math.inf

    @classmethod
    def for_config(cls, config: LinkConfig, rng: random.Random) -> DeliverySchedule:
        bits_per_s = None if config.bandwidth_mbps is None else config.bandwidth_mbps * 1e6
        return cls(config.delay_ms / 1000, config.jitter_ms / 1000, bits_per_s, rng)

    def deliver_at(self, arrival: float, size: int) -> float:
        sent = arrival
        if self.bits_per_s is not None:
            sent = max(arrival, self.link_free_at) + size * 8 / self.bits_per_s
            self.link_free_at = sent
        jitter = self.rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0
        self.last_delivery = max(self.last_delivery, sent + self.delay_s + jitter)
        return self.last_delivery


class _Pipe:
    """One direction of a connection: ``receive`` stamps and queues chunks, ``deliver`` writes them on time."""

    def __init__(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        schedule: DeliverySchedule,
        *,
        chunk_size: int,
        max_queued_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.queued_bytes = 0
        self._source = source
        self._sink = sink
        self._schedule = schedule
        self._chunk_size = chunk_size
        self._max_queued_bytes = max_queued_bytes
        self._clock = clock
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    async def receive(self) -> None:
        """Read until EOF, stamping each chunk on arrival; stop reading while the queue is over its bound."""
        while data := await self._source.read(self._chunk_size):
            self._queue.put_nowait((self._schedule.deliver_at(self._clock(), len(data)), data))
            self.queued_bytes += len(data)
            # Not reading lets TCP push back on the sender, so a slow receiver costs bounded memory.
            while self.queued_bytes > self._max_queued_bytes:
                self._room.clear()
                await self._room.wait()
        self._queue.put_nowait(None)

    async def deliver(self) -> None:
        """Write each chunk at its delivery time, in order; half-close the sink after the last one."""
        while (item := await self._queue.get()) is not None:
            deliver_at, data = item
            # A deadline on a coarse timer, not a polled condition: sleep again if woken a hair early.
            while (wait := deliver_at - self._clock()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(max(wait, _TIMER_GRANULARITY_S))
            self._sink.write(data)
            await self._sink.drain()
            self.queued_bytes -= len(data)
            if self.queued_bytes <= self._max_queued_bytes:
                self._room.set()
        if self._sink.can_write_eof():
            self._sink.write_eof()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection with RST, not FIN: the peer must not mistake a broken link for a clean end."""
    if writer.transport.is_closing():  # already gone (the peer reset it): uvloop's socket has no fd left
        writer.transport.abort()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Link:
    """A delaying TCP proxy: every accepted client gets its own upstream connection.

    Use as ``async with Link(config) as link:``; ``link.port`` is the port actually bound (listen port
    0 picks a free one). Each connection is one task owned by the link; ``stop`` cancels and awaits them.
    """

    def __init__(
        self,
        config: LinkConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        # time.monotonic, not loop.time(): uvloop's loop clock is cached per iteration and lags by up to 1 ms.
        self._clock = clock
        self._chunk_size = read_size(config.bandwidth_mbps)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pipes: set[_Pipe] = set()
        self._closing = False

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the link is not listening: call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    @property
    def queued_bytes(self) -> int:
        """Bytes read from one side and not yet delivered to the other, over all connections."""
        return sum(pipe.queued_bytes for pipe in self._pipes)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the link is already started")
        self._closing = False
        # A plain callback, not a coroutine: asyncio would wrap a coroutine in a task we do not own.
        self._server = await asyncio.start_server(self._accept, self.config.listen_host, self.config.listen_port)

    async def stop(self) -> None:
        """Stop accepting, reset every live connection and wait until all of their tasks are done."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Link:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            _reset(writer)
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("link connection_failed error=%r", exc, exc_info=exc)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Own one client: open its upstream, relay both directions, then close both sockets."""
        _set_nodelay(client_writer)
        writers = [client_writer]
        clean = False
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    self.config.upstream_host, self.config.upstream_port
                )
            except OSError as exc:
                log.warning(
                    "link upstream_unreachable upstream=%s:%d error=%r",
                    self.config.upstream_host,
                    self.config.upstream_port,
                    exc,
                )
                return
            writers.append(upstream_writer)
            _set_nodelay(upstream_writer)
            clean = await self._relay(client_reader, client_writer, upstream_reader, upstream_writer)
        finally:
            for writer in writers:
                if clean:
                    writer.close()
                else:
                    _reset(writer)
            if not clean:
                # abort() completes within one loop turn; waiting for it consumes a peer's reset, which
                # would otherwise be reported as "Future exception was never retrieved".
                for writer in writers:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> bool:
        """Run both directions until each has delivered its EOF; False if either side broke."""
        pipes = [
            self._pipe(client_reader, upstream_writer),
            self._pipe(upstream_reader, client_writer),
        ]
        self._pipes.update(pipes)
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tasks:
                for pipe in pipes:
                    tasks.create_task(pipe.receive())
                    tasks.create_task(pipe.deliver())
        except* OSError as group:  # a reset or broken pipe on either side tears the pair down
            error = group.exceptions[0]
            log.debug("link connection_reset peer=%s error=%r", client_writer.get_extra_info("peername"), error)
        finally:
            self._pipes.difference_update(pipes)
        return error is None

    def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> _Pipe:
        return _Pipe(
            source,
            sink,
            DeliverySchedule.for_config(self.config, self._rng),
            chunk_size=self._chunk_size,
            max_queued_bytes=self.config.max_queued_bytes,
            clock=self._clock,
        )


# --- command line -----------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8000
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 0..65535, got {text!r}")
    return host, int(port)


def _milliseconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got {text!r}")
    return value


def _megabits(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a bandwidth in Mbit/s > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT", help="port 0 picks one")
    parser.add_argument(
        "--upstream", type=_host_port, required=True, metavar="HOST:PORT", help="the hub behind the link"
    )
    parser.add_argument(
        "--delay-ms", type=_milliseconds, required=True, metavar="D", help="one-way delay, each direction"
    )
    parser.add_argument(
        "--jitter-ms", type=_milliseconds, default=0.0, metavar="J", help="extra delay in [0, J]; never reorders bytes"
    )
    parser.add_argument(
        "--bandwidth-mbps", type=_megabits, default=None, metavar="B", help="per direction (default: unlimited)"
    )


def config_from_args(args: argparse.Namespace) -> LinkConfig:
    (listen_host, listen_port), (upstream_host, upstream_port) = args.listen, args.upstream
    return LinkConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        delay_ms=args.delay_ms,
        jitter_ms=args.jitter_ms,
        bandwidth_mbps=args.bandwidth_mbps,
    )


async def _serve_until_signalled(config: LinkConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    link = Link(config)
    try:
        try:
            await link.start()
        except OSError as exc:
            print(f"railgate link: cannot listen on {config.listen_host}:{config.listen_port}: {exc}", file=sys.stderr)
            return 1
        upstream = f"{config.upstream_host}:{config.upstream_port}"
        print(f"link listening {config.listen_host}:{link.port} -> {upstream} {config.describe()}", flush=True)
        await stop.wait()
        return 0
    finally:
        await link.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run the link in the foreground until SIGINT or SIGTERM; 0 on a clean stop."""
    import uvloop  # the entry point picks the loop; libraries never do

    return uvloop.run(_serve_until_signalled(config_from_args(args)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railgate link", description="Emulate a long-haul link in front of a hub.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
