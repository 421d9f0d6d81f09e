"""bench.edge_bench's lean client (what firmware would use): framing by Content-Length over a real Unix socket,
against a scripted server (a fake, to send replies split and malformed on purpose)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from bench.edge_bench import LeanClient, _cpu_s, _cpu_us_per_call


def _scripted_server(path: Path, replies: list[list[bytes]]) -> tuple[threading.Thread, list[bytes]]:
    """Accept one connection; per request read, send that reply's chunks one by one; record what came."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        with conn, listener:
            for chunks in replies:
                data = b""
                while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 3:
                    data += conn.recv(65536)
                received.append(data)
                for chunk in chunks:
                    conn.sendall(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, received


def test_replies_are_framed_by_content_length_even_when_split(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\ncontent-length: 5\r\n\r\nhello"
    thread, received = _scripted_server(path, [[ok[:10], ok[10:60], ok[60:]], [ok + b""]])
    client = LeanClient(f"unix:{path}", b"abc", "application/msgpack")
    client.call()
    client.call()
    assert client.buffer == b""  # nothing of one reply left over for the next
    client.close()
    thread.join(10)
    assert received[0].startswith(b"POST /v2/models/digits/infer HTTP/1.1\r\n")
    assert b"Content-Length: 3\r\n" in received[0] and received[0].endswith(b"\r\n\r\nabc")


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}", "edge answered 400"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "without a Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", "closed the connection"),
    ],
)
def test_a_bad_reply_is_an_error_naming_it(tmp_path: Path, reply: bytes, message: str) -> None:
    path = tmp_path / "s.sock"
    thread, _ = _scripted_server(path, [[reply]])
    client = LeanClient(f"unix:{path}", b"abc", "application/msgpack")
    with pytest.raises(RuntimeError, match=message):
        client.call()
    client.close()
    thread.join(10)


def test_cpu_per_call_reads_this_process() -> None:
    start = _cpu_s(os.getpid())
    assert start is not None and start >= 0
    assert _cpu_us_per_call(1.0, 1.5, 1000) == pytest.approx(500.0)
    assert _cpu_us_per_call(None, 1.5, 1000) is None
    assert _cpu_s(2**22 + 12345) is None  # no such process


def test_the_awake_loops_run_during_the_block_and_are_gone_after_it() -> None:
    """bench.edge_bench.cores_kept_awake: one busy loop per core while the block runs, stopped by its
    handles when it ends (no process outlives the diagnostic)."""
    from bench.edge_bench import cores_kept_awake
    from devtools.procs import group_members

    before = set(Path("/proc").glob("[0-9]*"))
    with cores_kept_awake():
        started = [p for p in set(Path("/proc").glob("[0-9]*")) - before if _is_busy_loop(p)]
        assert len(started) == (os.cpu_count() or 1)
        pids = [int(p.name) for p in started]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"
        assert not group_members(pid)


def _is_busy_loop(proc: Path) -> bool:
    try:
        return b"while True: pass" in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
