"""The drain's listener filter on a real loopback socket: a new handshake is dropped (the client never
connects), while a connection whose handshake the kernel already completed is accepted and served."""

from __future__ import annotations

import socket
import sys

import pytest

from gateway.listener import accept_queue_length, listening_socket, refuse_new_connections

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_ATTACH_FILTER is Linux's")


def test_after_the_filter_a_new_client_never_connects_and_a_queued_one_is_still_accepted():
    sock = listening_socket("127.0.0.1", 0, backlog=8, reuse_port=False)
    sock.setblocking(True)
    port = sock.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # in the accept queue, not accepted
    try:
        assert accept_queue_length(sock) == 1
        assert refuse_new_connections(sock)
        late = socket.socket()
        late.settimeout(0.5)  # bound: a dropped SYN is retried after 1 s, so this times out
        with pytest.raises(TimeoutError):
            late.connect(("127.0.0.1", port))
        late.close()
        queued.sendall(b"ping")  # a connection queued before the filter still reaches the process
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert queued.recv(4) == b"pong"
    finally:
        queued.close()
        sock.close()
