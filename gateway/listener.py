"""The HTTP listening socket, and closing it without resetting the connections in its accept backlog.

Closing a listening socket resets every connection the kernel has accepted for it and the process
has not: those clients connected, sent a request and get a reset. So the drain closes it in steps:

1. new handshakes are dropped at the socket (a classic BPF filter that drops a SYN without ACK): a
   client retries its SYN, finds the port closed, and never connected; a handshake already under way
   still completes (its final ACK passes), so it joins the accept queue instead of being reset at close;
2. the accept queue empties: the event loop accepts what is queued, and each request is answered
   (served, or refused 503 with Retry-After and Connection: close, as the drain has reached);
3. the listening socket closes (nothing is queued behind it any more);
4. the connections already accepted are given a bounded moment to be answered and closed, before the
   runner closes whatever is left (idle keep-alive connections).

Linux only for steps 1-2 (elsewhere the filter and the queue length are skipped, and step 4 still runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import sys
import time

from aiohttp import web

from railcore.leanhttp import LeanSite

log = logging.getLogger("railgate.server")

_SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant (bytes of the packet to keep; 0 drops it)
_BPF_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: load the byte at k (a TCP socket's filter sees the TCP header)
_BPF_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_TCP_FLAGS = 13  # offset of the flags byte in the TCP header
_SYN, _ACK = 0x02, 0x10
_TCPI_UNACKED = 24  # offset of tcpi_unacked in struct tcp_info: a listener's accept queue length


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def listening_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket (SO_REUSEADDR; SO_REUSEPORT when asked), for ``web.SockSite`` (which
    must be given the same ``backlog``: it listens again). The kernel caps it at ``net.core.somaxconn``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=reuse_port)
    sock.setblocking(False)
    somaxconn = _somaxconn()
    if somaxconn is not None and somaxconn < backlog:
        log.warning(
            "event=listen_backlog_capped backlog=%d somaxconn=%d (raise net.core.somaxconn)", backlog, somaxconn
        )
    return sock


def _somaxconn() -> int | None:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def refuse_new_connections(sock: socket.socket) -> bool:
    """Drop every new handshake (a SYN without ACK) at ``sock`` while it stays open; every other
    packet passes, so a handshake already under way completes. Whether the filter is in place."""
    if not sys.platform.startswith("linux"):
        return False
    code = (_SockFilter * 5)(
        _SockFilter(_BPF_LDB_ABS, 0, 0, _TCP_FLAGS),
        _SockFilter(_BPF_AND_K, 0, 0, _SYN | _ACK),
        _SockFilter(_BPF_JEQ_K, 0, 1, _SYN),  # a bare SYN: the next instruction, else skip it
        _SockFilter(_BPF_RET_K, 0, 0, 0),  # drop
        _SockFilter(_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # keep the whole packet
    )
    program = _SockFprog(len(code), code)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(program))
    except OSError as exc:
        log.warning("event=listener_filter_failed error=%s", exc)
        return False
    return True


def accept_queue_length(sock: socket.socket) -> int | None:
    """Connections the kernel holds for ``sock`` that the process has not accepted yet (None: unknown)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])


async def close_without_resets(
    runner: web.AppRunner, site: web.SockSite | LeanSite, sock: socket.socket, timeout_s: float, poll_s: float = 0.005
) -> None:
    """Close ``site``'s listener without resetting what is queued on it (steps 1-4 above), within ``timeout_s``.
    A ``LeanSite``'s own connections are waited for as aiohttp's are (the caller closes what is left)."""
    end = time.monotonic() + timeout_s
    if refuse_new_connections(sock):
        # Polled: the kernel's queue length has no event to wait on. The loop accepts them meanwhile.
        while (queued := accept_queue_length(sock)) and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        if queued:
            log.warning("event=listener_closed_with_backlog queued=%d", queued)
    await site.stop()
    server = runner.server
    lean = site.connections if isinstance(site, LeanSite) else set()
    # Accepted connections are answered, then closed (Connection: close); aiohttp has no event for that.
    while ((server is not None and server.connections) or lean) and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)
    with contextlib.suppress(OSError):
        sock.close()
