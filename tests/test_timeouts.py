"""Deadlines on clients (headwater.http_protocol), against a real `headwater serve` over raw sockets:
headers that do not arrive, bodies that stall and idle keep-alive connections are closed, so slow
clients cannot hold the server's connections; a client that keeps its bytes moving is served."""

from __future__ import annotations

import itertools
import json
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, run_cli
from tests.rawhttp import BOUND, connect, read_response, read_until_closed, send_while_open, without_date

TIMEOUTS = ("--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1")


def closing(status: bytes, error: str) -> bytes:
    body = json.dumps({"error": error, "details": []}, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


HEADERS_TIMED_OUT = closing(b"408 Request Timeout", "timed out waiting for the request headers")
BODY_TIMED_OUT = closing(b"408 Request Timeout", "timed out waiting for the request body")


class Served:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key
        self.port = server.port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module (each test uses connections of its own)."""
    data_dir = tmp_path_factory.mktemp("timeouts") / "data"
    created = run_cli("keys", "create", "--tenant", "acme", "--role", "admin", "--data-dir", str(data_dir))
    key = created.stdout.strip().splitlines()[-1]
    server = ServerProcess(data_dir, args=(*TIMEOUTS, "--no-worker"))
    server.start()
    yield Served(server, key)
    server.kill()


def ingest_head(key: str, length: int) -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(served: Served) -> None:
    with connect(served.port) as sock:
        assert read_until_closed(sock) == HEADERS_TIMED_OUT


def test_half_a_header_is_answered_408_and_closed(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: of a head")
        assert read_until_closed(sock) == HEADERS_TIMED_OUT


def test_headers_that_trickle_in_are_cut_off_though_bytes_keep_coming(served: Served) -> None:
    """The deadline runs from the connection opening; each byte does not push it back (slowloris)."""
    with connect(served.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(0.2)
        received = b""
        for _ in range(int(BOUND / 0.2)):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            received += chunk
            if not chunk:
                break
        else:
            raise AssertionError(f"the server kept reading a header that never ended for {BOUND} s")
        assert received + read_until_closed(sock) == HEADERS_TIMED_OUT


def test_headers_over_64_kib_are_431_and_closed(served: Served) -> None:
    """httptools keeps whatever header it is sent: without a cap, one fast client fills memory."""
    with connect(served.port) as sock:
        lines = (b"X-Big: " + b"a" * 16_000 + b"\r\n" for _ in range(1000))  # 16 MB: never all read
        sent, received = send_while_open(sock, itertools.chain([b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], lines))
        received += read_until_closed(sock)
    too_large = closing(b"431 Request Header Fields Too Large", "request headers exceed the limit of 65536 bytes")
    assert received == too_large
    assert sent < 16_000_000
    # Below the cap, a large header is fine.
    assert httpx.get(served.server.url + "/healthz", headers={"X-Big": "a" * 60_000}).status_code == 200


def test_a_body_that_stalls_is_answered_408_and_closed(served: Served) -> None:
    body = b'{"type": "stalled"}'
    with connect(served.port) as sock:
        sock.sendall(ingest_head(served.key, len(body)) + body[:5])
        assert read_until_closed(sock) == BODY_TIMED_OUT
    # Nothing of it was stored.
    listed = httpx.get(served.server.url + "/v1/events?type=stalled", headers={"X-API-Key": served.key})
    assert listed.json()["data"] == []


def test_a_body_that_keeps_moving_is_served_however_long_it_takes(served: Served) -> None:
    """The body limit is on stalls, not on the whole body: 12 bytes 0.2 s apart take longer than the
    1 s timeout, and every gap is shorter."""
    body = b'{"type":"t"}'
    with connect(served.port) as sock:
        sock.sendall(ingest_head(served.key, len(body)))
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
    assert json.loads(response.partition(b"\r\n\r\n")[2])["accepted"] == 1


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(served: Served) -> None:
    with connect(served.port) as sock:
        for _ in range(2):  # both answered on the one connection: the header deadline is per request
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = without_date(read_response(sock))
            head, _, body = response.partition(b"\r\n\r\n")
            assert (head.split(b"\r\n")[0], body) == (b"HTTP/1.1 200 OK", b'{"status":"ok"}')
        # Closed without a word: no request had begun.
        assert read_until_closed(sock) == b""


def test_hundreds_of_slow_connections_are_all_closed_while_a_client_is_served(served: Served) -> None:
    count = 300
    slow = [connect(served.port) for _ in range(count)]
    selector = selectors.DefaultSelector()
    try:
        for index, sock in enumerate(slow):
            if index % 2:  # half send half a header, half nothing
                sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Le")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
        # Served while they wait, and served right away (a 5 s client timeout, 1 s deadlines).
        with httpx.Client(base_url=served.server.url, timeout=5) as client:
            sent = client.post("/v1/events", json={"type": "meanwhile"}, headers={"X-API-Key": served.key})
            assert (sent.status_code, sent.json()["accepted"]) == (200, 1)
        answers: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + BOUND
        while len(answers) < count and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.01, deadline - time.monotonic())):
                sock, received = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received += chunk
                if not chunk:
                    answers[sock] = bytes(received)
                    selector.unregister(sock)
        assert len(answers) == count, f"{count - len(answers)} of {count} still open after {BOUND} s"
        assert set(answers.values()) == {HEADERS_TIMED_OUT}
    finally:
        selector.close()
        for sock in slow:
            sock.close()


def test_a_later_request_whose_headers_stop_halfway_is_answered_408(served: Served) -> None:
    """The header deadline of a kept-alive connection's second request runs from its first byte
    (armed only when a read leaves the headers unfinished)."""
    with connect(served.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 OK\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        started = time.monotonic()
        assert read_until_closed(sock) == HEADERS_TIMED_OUT
        assert time.monotonic() - started < BOUND


def test_expect_100_continue_is_answered_before_the_body_is_sent(served: Served) -> None:
    """The `100 Continue` is the cycle's first write, which is held for the loop's next turn
    (headwater.http_protocol._JoinedWrites): it must still go out while the client waits."""
    body = b'{"type":"continued"}'
    head = ingest_head(served.key, len(body)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    with connect(served.port) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(65536)
            assert chunk, interim
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
    assert json.loads(response.partition(b"\r\n\r\n")[2])["accepted"] == 1


def test_pipelined_head_large_and_small_responses_arrive_whole_and_in_order(served: Served) -> None:
    """Each response's head and body go out in one write when the body is small, in two when it
    is over 64 KiB (the OpenAPI document), and alone for a HEAD: in every case in order, on one
    connection, byte for byte what separate requests get."""
    spec = httpx.get(served.server.url + "/openapi.json")
    assert len(spec.content) > 64 * 1024
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(served.port) as sock:
        sock.sendall(
            health
            + b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        stream = read_until_closed(sock)
    responses = []
    for head_request in (False, True, False, False):
        head, _, stream = stream.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = 0 if head_request else int(fields[b"content-length"])
        responses.append((head.split(b"\r\n")[0], fields[b"content-length"], stream[:length]))
        stream = stream[length:]
    assert stream == b""
    ok = b"HTTP/1.1 200 OK"
    assert responses == [
        (ok, b"15", b'{"status":"ok"}'),
        (ok, b"15", b""),
        (ok, str(len(spec.content)).encode(), spec.content),
        (ok, b"15", b'{"status":"ok"}'),
    ]
