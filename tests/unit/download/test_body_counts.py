"""CountedBody over a real loopback TCP connection, written the way gunicorn writes a body
(``sendall`` per chunk, then the next one): what it reports is what the peer's TCP
acknowledged, not what was handed to the kernel. Linux only (TCP_INFO, SIOCOUTQ)."""

from __future__ import annotations

import socket
import struct
import sys
import threading

import pytest

from portal.download.body import CountedBody
from portal.sendfile import SETTLE_TAIL

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")

CHUNK = 256 * 1024
WINDOW = 64 * 1024  # the reader's receive buffer: it can hold this much unread


def connected() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback connection with a small client buffer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WINDOW)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def serve(body: CountedBody, sock: socket.socket) -> None:
    """gunicorn's loop: write each chunk, then ask for the next; close the body at the end."""
    try:
        for chunk in body:
            sock.sendall(chunk)
    except OSError:
        pass
    finally:
        body.close()


def test_a_reader_that_hangs_up_counts_what_it_acknowledged():
    server, client = connected()
    reported = []
    body = CountedBody((b"x" * CHUNK for _ in range(64)), reported.append, server)
    writer = threading.Thread(target=serve, args=(body, server))
    writer.start()
    got = 0
    while got < 3 * CHUNK:
        got += len(client.recv(65536))
    # reset, as a killed client's kernel does with unread data
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    writer.join(10)
    server.close()
    [sent] = reported
    # handed to the kernel: every chunk sendall finished, plus the one it was writing
    handed = body.written + body.pending
    assert got <= sent <= got + 4 * WINDOW  # what the client's TCP acknowledged
    assert sent < handed  # which the old count (chunks pulled) overstated


def test_a_body_taken_whole_counts_whole_once_the_reader_has_it():
    server, client = connected()
    reported = []
    size = 4 * SETTLE_TAIL
    body = CountedBody((b"y" * CHUNK for _ in range(size // CHUNK)), reported.append, server)
    writer = threading.Thread(target=serve, args=(body, server))
    writer.start()
    got = 0
    while got < size:
        got += len(client.recv(65536))
    writer.join(10)
    assert reported == [size]
    server.close()
    client.close()


def test_without_a_socket_the_count_is_what_the_server_was_handed():
    reported = []
    body = CountedBody(iter([b"a" * 10, b"b" * 20]), reported.append)
    assert next(body) == b"a" * 10
    body.close()  # the server gave up after taking one chunk
    assert reported == [10]
