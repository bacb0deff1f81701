"""`GET /v1/events/live`: server-sent events from a real `headwater serve`, on every backend.

A stream is read over a real socket (Starlette's test client would wait for an endless body to
end). Each test's events are its own tenant's; what it must not see is sent too.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from headwater.api import live as live_module
from headwater.config import Settings
from tests import rawhttp
from tests.conftest import ServerProcess, make_key, server_args

WAIT = 60.0  # generous: the suite runs four test processes on two cores


@dataclass
class Message:
    id: str | None
    event: str
    data: dict[str, Any]


class Stream:
    """An open stream, read on a thread of its own into a queue of comments and messages."""

    def __init__(self, url: str, key: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        self.items: queue.Queue[str | Message | Exception] = queue.Queue()
        self.client = httpx.Client(timeout=httpx.Timeout(WAIT, read=None))
        self.request = self.client.build_request(
            "GET", url + "/v1/events/live", params=params, headers={"X-API-Key": key, **(headers or {})}
        )
        self.response = self.client.send(self.request, stream=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        block: list[str] = []
        try:
            for line in self.response.iter_lines():
                if line:
                    block.append(line)
                    continue
                self.items.put(parse(block))
                block = []
            self.items.put(EOFError("the server ended the stream"))
        except (httpx.HTTPError, OSError, ValueError) as exc:  # the test closed the stream, or the server went
            self.items.put(exc)

    def next(self) -> str | Message:
        item = self.items.get(timeout=WAIT)
        if isinstance(item, Exception):
            raise item
        return item

    def messages(self, count: int) -> list[Message]:
        """The next `count` messages, comments (keepalives) aside."""
        found: list[Message] = []
        while len(found) < count:
            item = self.next()
            if isinstance(item, Message):
                found.append(item)
        return found

    def close(self) -> None:
        self.response.close()
        self.client.close()


def parse(block: list[str]) -> str | Message:
    if all(line.startswith(":") for line in block):
        return "\n".join(block)
    fields: dict[str, list[str]] = {}
    for line in block:
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    return Message(fields.get("id", [None])[0], fields["event"][0], json.loads("\n".join(fields["data"])))


@dataclass
class Live:
    server: ServerProcess
    settings: Settings

    def key(self, tenant: str, role: str = "admin", mode: str = "live") -> str:
        return make_key(self.settings, tenant, role, mode)

    def send(self, key: str, *events: dict[str, Any]) -> list[str]:
        response = httpx.post(self.server.url + "/v1/events", json={"events": list(events)}, headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["results"]]

    def open(self, key: str, **kwargs: Any) -> Stream:
        stream = Stream(self.server.url, key, **kwargs)
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.response.headers["cache-control"] == "no-store"
        assert stream.next() == ": connected"
        return stream


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    server = ServerProcess(settings.data_dir, args=tuple(server_args(settings)))
    server.start(timeout=60)
    server.drain()
    try:
        yield Live(server, settings)
    finally:
        server.kill()


def test_every_event_of_the_tenant_and_mode_in_log_order_and_nothing_else(live: Live) -> None:
    key = live.key("acme")
    other_tenant, test_mode = live.key("globex"), live.key("acme", mode="test")
    stream = live.open(key)
    try:
        ids = live.send(key, {"type": "a", "subject": "s1"}, {"type": "b", "subject": "s2"})
        live.send(other_tenant, {"type": "a"})
        live.send(test_mode, {"type": "a"})
        ids += live.send(key, {"type": "c", "source": "pos", "data": {"amount": 5}})
        got = stream.messages(3)
    finally:
        stream.close()
    assert [m.data["id"] for m in got] == ids
    assert [m.event for m in got] == ["event"] * 3
    assert [m.id for m in got] == [str(m.data["seq"]) for m in got]
    seqs = [m.data["seq"] for m in got]
    assert seqs == sorted(seqs)
    stored = httpx.get(f"{live.server.url}/v1/events/{ids[2]}", headers={"X-API-Key": key}).json()
    assert got[2].data == stored


def test_filters_by_type_subject_and_source(live: Live) -> None:
    key = live.key("acme")
    stream = live.open(key, params={"type": ["signup", "login"], "subject": "u1", "source": "web"})
    try:
        ids = live.send(
            key,
            {"type": "signup", "subject": "u1", "source": "app"},
            {"type": "purchase", "subject": "u1", "source": "web"},
            {"type": "signup", "subject": "u2", "source": "web"},
            {"type": "login", "subject": "u1", "source": "web"},
            {"type": "signup", "subject": "u1", "source": "web"},
        )
        got = stream.messages(2)
    finally:
        stream.close()
    assert [m.data["id"] for m in got] == [ids[3], ids[4]]


def test_a_reconnect_with_the_last_event_id_misses_nothing_and_repeats_nothing(live: Live) -> None:
    key = live.key("acme")
    stream = live.open(key)
    try:
        first = live.send(key, *({"type": "t", "data": {"n": n}} for n in range(3)))
        seen = stream.messages(3)
    finally:
        stream.close()
    assert [m.data["id"] for m in seen] == first
    later = live.send(key, *({"type": "t", "data": {"n": n}} for n in range(3, 8)))  # while nobody listens
    assert seen[-1].id is not None
    again = live.open(key, headers={"Last-Event-ID": seen[1].id})
    try:
        got = again.messages(6)
    finally:
        again.close()
    assert [m.data["id"] for m in got] == [first[2], *later]
    # `after` does the same; from 0, the whole history.
    whole = live.open(key, params={"after": "0"})
    try:
        assert [m.data["id"] for m in whole.messages(8)] == first + later
    finally:
        whole.close()


def test_data_sent_with_line_breaks_arrives_whole(live: Live) -> None:
    key = live.key("acme")
    stream = live.open(key)
    body = b'{"type": "note",\r\n "data": {\n  "text": "line one\\nline two",\r  "n": [1,\n 2]\n}}'
    try:
        response = httpx.post(
            live.server.url + "/v1/events", content=body, headers={"X-API-Key": key, "Content-Type": "application/json"}
        )
        assert response.status_code == 200, response.text
        [message] = stream.messages(1)
    finally:
        stream.close()
    assert message.data["data"] == {"text": "line one\nline two", "n": [1, 2]}


@pytest.mark.parametrize(
    ("params", "headers", "field", "text"),
    [
        ({"after": "-1"}, {}, "after", "after must be an event's offset (the id of a message of this stream)"),
        ({"after": "1e3"}, {}, "after", "after must be an event's offset (the id of a message of this stream)"),
        ({"after": "9" * 19}, {}, "after", "after must be an event's offset (the id of a message of this stream)"),
        (
            {},
            {"Last-Event-ID": "evt_1"},
            "Last-Event-ID",
            "Last-Event-ID must be an event's offset (the id of a message of this stream)",
        ),
        ({"type": [f"t{n}" for n in range(21)]}, {}, "type", "at most 20 types"),
    ],
)
def test_bad_positions_and_filters_are_400(
    live: Live, params: dict[str, Any], headers: dict[str, str], field: str, text: str
) -> None:
    key = live.key("acme")
    response = httpx.get(
        live.server.url + "/v1/events/live", params=params, headers={"X-API-Key": key, **headers}, timeout=WAIT
    )
    assert response.status_code == 400
    code = "too_many" if field == "type" else "invalid"
    assert response.json() == {"error": text, "details": [{"field": field, "code": code, "message": text}]}


def test_a_key_that_cannot_read_gets_no_stream(live: Live) -> None:
    url = live.server.url + "/v1/events/live"
    missing = httpx.get(url, timeout=WAIT)
    assert missing.status_code == 401
    ingest_only = httpx.get(url, headers={"X-API-Key": live.key("acme", "ingest")}, timeout=WAIT)
    assert (ingest_only.status_code, ingest_only.json()) == (
        403,
        {"error": "the ingest role may not read", "details": []},
    )


def test_an_open_stream_does_not_hold_the_server_from_stopping(live: Live) -> None:
    key = live.key("acme")
    stream = live.open(key)
    proc = live.server.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(WAIT)  # uvicorn would otherwise wait for the stream to end, for ever
        with pytest.raises(EOFError):  # ended by the server, cleanly, at its next look
            while True:
                stream.next()
    finally:
        stream.close()
    assert proc.returncode == 0


def test_a_head_request_gets_the_headers_and_its_exchange_ends(live: Live) -> None:
    """The connection goes on to the next request only once the HEAD's exchange has ended: a
    stream behind it (sending nothing, for ever) would hold the second answer back."""
    key = live.key("acme")
    with rawhttp.connect(live.server.port) as sock:
        sock.sendall(
            f"HEAD /v1/events/live HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        received = b""
        while received.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)  # the socket's timeout (rawhttp.BOUND) fails a held answer
            assert chunk, received
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream; charset=utf-8" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # no body before the next answer


def test_a_backlog_longer_than_one_read_of_the_log_arrives_whole_and_in_order(live: Live) -> None:
    """More offsets than one read takes (live.SPAN), mostly another tenant's."""
    key, other = live.key("acme"), live.key("globex")
    ours: list[str] = []
    for round_ in range(3):
        live.send(other, *({"type": "noise"} for _ in range(1000)))
        ours += live.send(key, {"type": "mine", "data": {"round": round_}})
        for _ in range(2):
            live.send(other, *({"type": "noise"} for _ in range(800)))
    stream = live.open(key, params={"after": "0"})
    try:
        got = stream.messages(3)
    finally:
        stream.close()
    assert [m.data["id"] for m in got] == ours
    assert [m.data["data"] for m in got] == [{"round": 0}, {"round": 1}, {"round": 2}]
    assert got[2].data["seq"] > live_module.SPAN  # the last came from a second read
