"""Body limits at the socket, against a real `headwater serve`: a 413 closes the connection while the
client is still sending (the rest is never read), and a gzip body is limited as sent, too: a
stream of empty deflate blocks, which inflates to nothing, is cut off at the compressed limit."""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, run_cli
from tests.rawhttp import connect, read_response, read_until_closed, send_while_open

LIMIT = 65536
GIB = 1024**3


class Served:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key
        self.port = server.port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("bodies") / "data"
    created = run_cli("keys", "create", "--tenant", "acme", "--role", "admin", "--data-dir", str(data_dir))
    key = created.stdout.strip().splitlines()[-1]
    server = ServerProcess(data_dir, env={"HEADWATER_MAX_BODY_BYTES": str(LIMIT)}, args=("--no-worker",))
    server.start()
    yield Served(server, key)
    server.kill()


def empty_deflate_blocks(total: int) -> Iterator[bytes]:
    """A gzip stream of `total` bytes (generated as sent, never held) that inflates to nothing:
    the gzip header, then empty stored blocks (each: a non-final block header, LEN 0, NLEN)."""
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    chunk = b"\x00\x00\x00\xff\xff" * 13107  # 65,535 bytes
    for _ in range((total - 10) // len(chunk)):
        yield chunk


def test_the_generated_stream_is_a_valid_gzip_stream_that_inflates_to_nothing() -> None:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = b"".join(inflater.decompress(chunk) for chunk in itertools.islice(empty_deflate_blocks(GIB), 100))
    assert (produced, inflater.unconsumed_tail, inflater.eof) == (b"", b"", False)


def chunked(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"


def head(key: str, path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {key}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_of(received: bytes) -> tuple[str, set[str], object]:
    """(status line; headers but `date` and `x-request-id`, which vary; the JSON body)."""
    top, _, body = received.partition(b"\r\n\r\n")
    status, *lines = top.decode().split("\r\n")
    return status, {line for line in lines if not line.startswith(("date:", "x-request-id:"))}, json.loads(body)


def expect_413(received: bytes, what: str, limit: int) -> None:
    body = {"error": f"{what} exceeds the limit of {limit} bytes", "details": []}
    length = len(json.dumps(body, separators=(",", ":")))
    headers = {"server: uvicorn", "content-type: application/json", f"content-length: {length}", "connection: close"}
    assert response_of(received) == ("HTTP/1.1 413 Request Entity Too Large", headers, body)


def still_served(served: Served) -> None:
    """A normal request on a new connection is served."""
    response = httpx.post(served.server.url + "/v1/events", json={"type": "after"}, headers={"X-API-Key": served.key})
    assert (response.status_code, response.json()["accepted"]) == (200, 1)


# The hot ingest route and a Starlette one, which answer errors each their own way.
PATHS = ["/v1/events", "/v1/webhooks"]


@pytest.mark.parametrize("path", PATHS)
def test_a_declared_length_over_the_limit_is_413_and_the_connection_closes(served: Served, path: str) -> None:
    with connect(served.port) as sock:
        lines = head(served.key, path, "Content-Type: application/json", f"Content-Length: {GIB}")
        sent, received = send_while_open(sock, itertools.chain([lines], itertools.repeat(b" " * 65536, GIB // 65536)))
        received += read_until_closed(sock)
    # Refused before any route runs: the middleware's answer, whatever the route.
    expect_413(received, "request body", LIMIT)
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a body it had refused"
    still_served(served)


@pytest.mark.parametrize("path", PATHS)
def test_a_streamed_body_past_the_limit_is_413_and_the_connection_closes(served: Served, path: str) -> None:
    with connect(served.port) as sock:
        lines = head(served.key, path, "Content-Type: application/json", "Transfer-Encoding: chunked")
        body = chunked(itertools.repeat(b" " * 16384, GIB // 16384))
        sent, received = send_while_open(sock, itertools.chain([lines], body))
        received += read_until_closed(sock)
    expect_413(received, "request body", LIMIT)
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a body it had refused"
    still_served(served)


def test_a_gibibyte_of_empty_deflate_blocks_is_cut_off_at_the_compressed_limit(served: Served) -> None:
    with connect(served.port) as sock:
        lines = head(served.key, "/v1/events", "Content-Encoding: gzip", "Transfer-Encoding: chunked")
        sent, received = send_while_open(sock, itertools.chain([lines], chunked(empty_deflate_blocks(GIB))))
        received += read_until_closed(sock)
    expect_413(received, "compressed request body", LIMIT)
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a body it had refused"
    still_served(served)


def test_a_declared_gzip_length_over_the_compressed_limit_is_413_at_once(served: Served) -> None:
    with connect(served.port) as sock:
        lines = head(served.key, "/v1/events", "Content-Encoding: gzip", f"Content-Length: {GIB}")
        sent, received = send_while_open(sock, itertools.chain([lines], empty_deflate_blocks(GIB)))
        received += read_until_closed(sock)
    expect_413(received, "compressed request body", LIMIT)
    assert sent < 64 * 1024 * 1024
    still_served(served)


def test_a_body_answered_before_it_is_read_is_not_read_on_and_on(served: Served) -> None:
    """A 401 comes before the body is read; the server then drops at most 64 KiB more of it to keep
    the connection, and closes rather than read a body that does not end."""
    with connect(served.port) as sock:
        lines = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = chunked(itertools.repeat(b" " * 16384, GIB // 16384))
        sent, received = send_while_open(sock, itertools.chain([lines], body))
        received += read_until_closed(sock)
    status, _, error = response_of(received)
    missing = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    assert (status, error) == ("HTTP/1.1 401 Unauthorized", {"error": missing, "details": []})
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a body nobody wanted"
    still_served(served)


def test_a_small_unread_body_keeps_the_connection(served: Served) -> None:
    with connect(served.port) as sock:
        for _ in range(2):
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b" " * 1000)
            assert read_response(sock).startswith(b"HTTP/1.1 401 Unauthorized\r\n")


def test_a_key_told_to_wait_gets_its_429_before_its_body_is_read(served: Served) -> None:
    """A flood that ignores `Retry-After` costs its headers: the key's next request is refused
    before any of its body is read, and a body that does not end is not read on."""
    limit = {"per_second": 0.01, "burst": 1}
    made = httpx.post(
        served.server.url + "/v1/keys", json={"role": "ingest", "rate_limit": limit}, headers={"X-API-Key": served.key}
    )
    key = made.json()["key"]
    as_key = {"X-API-Key": key}
    assert httpx.post(served.server.url + "/v1/events", json={"type": "a"}, headers=as_key).status_code == 200
    told = httpx.post(served.server.url + "/v1/events", json={"type": "b"}, headers=as_key)
    assert (told.status_code, told.headers["retry-after"]) == (429, "100")
    with connect(served.port) as sock:
        body = chunked(itertools.repeat(b" " * 16384, GIB // 16384))
        lines = head(key, "/v1/events", "Transfer-Encoding: chunked")
        sent, received = send_while_open(sock, itertools.chain([lines], body))
        received += read_until_closed(sock)
    status, headers, error = response_of(received)
    message = "rate limit of 0.01 events/s (burst 1) exceeded: retry in 100 s"
    assert status == "HTTP/1.1 429 Too Many Requests"
    assert {"retry-after: 100", "ratelimit-limit: 1", "ratelimit-remaining: 0"} <= headers
    assert error == {"error": message, "details": [{"field": "", "code": "rate_limited", "message": message}]}
    assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of a refused key's body"
    still_served(served)
