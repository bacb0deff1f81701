"""The `headwater` command line, run as real subprocesses: keys, serve, events export/import/tail."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from headwater.config import Settings
from headwater.keys import KEY_PATTERN
from headwater.storage.sqlite import MAIN_FILE
from tests.conftest import HEADWATER, PATIENT_SYNC_TIMEOUT, Api, ServerProcess, free_port, run_cli, store_args

KEY_LINE = re.compile(rf"^{KEY_PATTERN.pattern}$")
WIDE = {"COLUMNS": "200"}  # rich messages unwrapped
NARROW = {"COLUMNS": "80"}


def create(data_dir: Path, tenant: str, role: str, *extra: str) -> tuple[str, str]:
    """(key, key id) from `keys create`; the key must be alone on the last line."""
    out = run_cli("keys", "create", "--tenant", tenant, "--role", role, *extra, "--data-dir", str(data_dir))
    lines = out.stdout.strip().splitlines()
    assert KEY_LINE.match(lines[-1]), out.stdout
    key_id = re.search(r"\b(key_[0-9a-f]+)\b", out.stdout)
    assert key_id is not None, out.stdout
    return lines[-1], key_id.group(1)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, args).fetchall()


def count(data_dir: Path) -> int:
    return int(query(data_dir / "headwater.db", "SELECT count(*) FROM events")[0][0])


def ndjson(text: str | bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (text.splitlines() if text else [])]


def write_lines(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def stop_and_read(server: ServerProcess) -> str:
    server.stop()
    assert server.proc is not None and server.proc.stdout is not None
    with server.proc.stdout:
        return server.proc.stdout.read().decode()


def read_until_key(server: ServerProcess) -> tuple[str, list[str]]:
    """The bootstrap key a fresh server printed before it started listening."""
    assert server.proc is not None and server.proc.stdout is not None
    lines: list[str] = []
    for _ in range(10):
        line = server.proc.stdout.readline().decode().strip()
        lines.append(line)
        if KEY_LINE.match(line):
            return line, lines
    raise AssertionError(f"no bootstrap key in {lines}")


def at(where: Path | Settings) -> list[str]:
    """A command's store: a data dir of its own, or the backend's store of a test's settings."""
    return store_args(where) if isinstance(where, Settings) else ["--data-dir", str(where)]


def export(where: Path | Settings, tenant: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("events", "export", "--tenant", tenant, *extra, *at(where))


def import_(where: Path | Settings, path: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("events", "import", str(path), *extra, *at(where), env=WIDE, check=check)


def summary(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    found = re.search(r"accepted (\d+), duplicates (\d+), rejected (\d+)", result.stdout)
    assert found is not None, result.stdout
    accepted, duplicates, rejected = (int(g) for g in found.groups())
    return accepted, duplicates, rejected


# keys


def test_keys_create_prints_key_last_and_creates_tenant(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    live, _ = create(data_dir, "newco", "admin")
    assert live.startswith("hw_live_")
    assert query(data_dir / "headwater.db", "SELECT name FROM tenants") == [("newco",)]
    test, _ = create(data_dir, "newco", "viewer", "--mode", "test")
    assert test.startswith("hw_test_")
    assert query(data_dir / "headwater.db", "SELECT name FROM tenants") == [("newco",)]
    rows = query(data_dir / "headwater.db", "SELECT role, mode FROM api_keys ORDER BY rowid")
    assert rows == [("admin", "live"), ("viewer", "test")]


def test_keys_work_list_and_revoke_against_running_server(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = server_factory(data_dir)
    server.start()
    try:
        # Created by another process while the server runs: usable at once.
        key, key_id = create(data_dir, "t", "ingest")
        test_key, test_key_id = create(data_dir, "t", "admin", "--mode", "test", "--name", "point of sale till")
        assert test_key.startswith("hw_test_")
        with httpx.Client(base_url=server.url, timeout=10) as client:
            sent = client.post("/v1/events", json={"type": "live_event"}, headers=auth(key))
            assert sent.status_code == 200, sent.text
            sent = client.post("/v1/events", json={"type": "test_event"}, headers=auth(test_key))
            assert sent.status_code == 200, sent.text
            seen = client.get("/v1/events", headers=auth(test_key)).json()["data"]
            assert [(e["type"], e["tenant"], e["mode"]) for e in seen] == [("test_event", "t", "test")]

            # In an 80-column terminal too, whole ids (what `keys revoke` takes) and prefixes.
            listed = run_cli("keys", "list", "--tenant", "t", "--data-dir", str(data_dir), env=NARROW).stdout
            assert key[:12] in listed and test_key[:12] in listed
            assert key_id in listed and test_key_id in listed and "point of sale till" in listed
            assert key not in listed and test_key not in listed
            assert key[12:24] not in listed and test_key[12:24] not in listed

            run_cli("keys", "revoke", key_id, "--tenant", "t", "--data-dir", str(data_dir))
            revoked_at = time.monotonic()
            while True:
                status = client.post("/v1/events", json={"type": "x"}, headers=auth(key)).status_code
                if status == 401:
                    break
                assert status == 200
                assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
                time.sleep(0.02)
            assert client.post("/v1/events", json={"type": "x"}, headers=auth(key)).status_code == 401
            assert client.post("/v1/events", json={"type": "x"}, headers=auth(test_key)).status_code == 200

        rows = query(data_dir / "headwater.db", "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = ?", key_id)
        assert rows == [(1,)]
        again = run_cli("keys", "revoke", key_id, "--tenant", "t", "--data-dir", str(data_dir), check=False)
        assert again.returncode != 0 and key_id in again.stderr
    finally:
        stop_and_read(server)


# serve


def test_serve_prints_bootstrap_admin_key_once(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = server_factory(data_dir)
    first.start()
    try:
        key, _ = read_until_key(first)
        assert key.startswith("hw_live_")
        keys = httpx.get(first.url + "/v1/keys", headers=auth(key), timeout=10)
        assert keys.status_code == 200, keys.text
        assert [(k["tenant"], k["role"], k["mode"]) for k in keys.json()["data"]] == [("default", "admin", "live")]
    finally:
        rest = stop_and_read(first)
    assert "hw_" not in rest
    assert rest.splitlines()[0] == f"Paste it into the web console to watch events arrive: {first.url}/"

    second = server_factory(data_dir)
    second.start()
    output = stop_and_read(second)
    assert "hw_" not in output and "Created tenant" not in output
    assert query(data_dir / "headwater.db", "SELECT count(*) FROM api_keys") == [(1,)]


# No HEADWATER_* variables of the suite's own (HEADWATER_FUZZ_SEED, ...): their warnings would be output too.
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}


def _serve(data_dir: Path, port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HEADWATER, "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
        env={**CLEAN, "HEADWATER_SYNC_TIMEOUT": PATIENT_SYNC_TIMEOUT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=10)
    return stdout, stderr


def test_serve_says_it_listens_once_it_does(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path / "data", port)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == f"Headwater listening on http://127.0.0.1:{port} (data in {tmp_path / 'data'})\n"
        # At once: a connection made the moment the line is read is accepted, and answered
        # once the app has started.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        _stop(proc)


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*HEADWATER, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env=CLEAN,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"headwater: port {port} on 127.0.0.1 is in use\n"
    # Nothing was created: no tenant, no bootstrap key shown for a server that never ran.
    assert not (tmp_path / "data").exists()


ACCESS_LINE = re.compile(r"^INFO: +(\S+) (\S+) (\d{3}) (\d+\.\d)ms tenant=(\S+) key=(\S+) request=req_[0-9a-f]{32}$")


def test_the_access_log_has_a_line_per_request_naming_the_caller_not_the_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key, _ = create(data_dir, "acme", "admin")
    test_key, _ = create(data_dir, "acme", "ingest", "--mode", "test")
    port = free_port()
    proc = _serve(data_dir, port, "--log-level", "info")
    try:
        url = f"http://127.0.0.1:{port}"
        assert proc.stderr is not None and proc.stderr.readline().startswith("Headwater listening")
        with httpx.Client(base_url=url, timeout=90) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/events", json={"type": "a"}, headers=auth(key)).status_code == 200
            sent = client.post("/v1/events?wait=processed", json={"type": "b"}, headers=auth(test_key))
            assert sent.status_code == 200
            assert client.get("/v1/keys?limit=5", headers={"X-API-Key": key}).status_code == 200
            assert client.get("/v1/keys", headers={"X-API-Key": test_key}).status_code == 403
            assert client.get("/v1/keys", headers=auth("hw_live_" + "x" * 43)).status_code == 401
            assert client.post("/v1/events", content=b"{" * 10, headers=auth(key)).status_code == 400
    finally:
        stdout, stderr = _stop(proc)
    lines = [m.groups() for m in map(ACCESS_LINE.match, stderr.splitlines()) if m]
    assert [(method, path, status, tenant, prefix) for method, path, status, _, tenant, prefix in lines] == [
        ("GET", "/healthz", "200", "-", "-"),
        ("POST", "/v1/events", "200", "acme", key[:12]),
        ("POST", "/v1/events", "200", "acme", test_key[:12]),
        ("GET", "/v1/keys", "200", "acme", key[:12]),
        ("GET", "/v1/keys", "403", "acme", test_key[:12]),
        ("GET", "/v1/keys", "401", "-", "-"),
        ("POST", "/v1/events", "400", "acme", key[:12]),
    ]
    assert key not in stdout + stderr and test_key not in stdout + stderr
    assert key[12:] not in stderr and test_key[12:] not in stderr


def test_the_access_log_is_off_at_the_default_level(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key, _ = create(data_dir, "acme", "admin")
    port = free_port()
    proc = _serve(data_dir, port)
    try:
        assert proc.stderr is not None and proc.stderr.readline().startswith("Headwater listening")
        response = httpx.post(f"http://127.0.0.1:{port}/v1/events", json={"type": "a"}, headers=auth(key), timeout=10)
        assert response.status_code == 200
    finally:
        stdout, stderr = _stop(proc)
    # At warning, the one line is that webhook secrets are stored in clear (no HEADWATER_SECRET_KEY).
    assert (stdout, stderr) == (
        "",
        "WARNING:  HEADWATER_SECRET_KEY is not set: webhook secrets are stored in clear; anyone who can read the"
        " database or a backup of it can sign webhooks as this server\n",
    )


def test_environment_variables(tmp_path: Path) -> None:
    data_dir = tmp_path / "envdata"
    port = free_port()
    env = {**os.environ, **WIDE, "HEADWATER_DATA_DIR": str(data_dir), "HEADWATER_TENANT": "envco"}
    env.pop("HEADWATER_PORT", None)

    def cli(*args: str, extra: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            [*HEADWATER, *args], cwd=tmp_path, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    key = cli("keys", "create", "--role", "admin").strip().splitlines()[-1]
    assert KEY_LINE.match(key) and key.startswith("hw_live_")
    test_key = cli("keys", "create", "--role", "admin", extra={"HEADWATER_MODE": "test"}).splitlines()[-1]
    assert test_key.startswith("hw_test_")
    assert query(data_dir / "headwater.db", "SELECT name FROM tenants") == [("envco",)]
    assert key[:12] in cli("keys", "list")
    assert not (tmp_path / "headwater-data").exists()

    proc = subprocess.Popen(
        [*HEADWATER, "serve"],
        cwd=tmp_path,
        env={**env, "HEADWATER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not listen on HEADWATER_PORT"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            time.sleep(0.05)
        response = httpx.post(url + "/v1/events", json={"type": "via_env"}, headers=auth(key), timeout=10)
        assert response.status_code == 200, response.text
    finally:
        proc.terminate()
        proc.wait(10)
    assert query(data_dir / "headwater.db", "SELECT tenant, type FROM events") == [("envco", "via_env")]
    assert not (tmp_path / "headwater-data").exists()


# events export


def list_all(api: Api, key: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        body = api.client.get("/v1/events", params=params, headers=api.as_(key)).json()
        events += body["data"]
        if body["next_cursor"] is None:
            return events
        params["cursor"] = body["next_cursor"]


def seed(api: Api) -> dict[str, str]:
    """Events in three scopes: t/live, t/test and u/live, interleaved in the log."""
    keys = {"t": api.key("t"), "t-test": api.key("t", mode="test"), "u": api.key("u")}
    for i in range(30):
        for scope, key in keys.items():
            event = {
                "type": f"type{i % 3}",
                "subject": f"s{i}" if i % 2 else None,
                "source": scope,
                "channel": "web",
                "time": f"2026-04-{1 + i % 28:02d}T12:00:00.{i:06d}Z" if i % 4 else None,
                "idempotency_key": f"{scope}-{i}" if i % 5 else None,
                "data": {"i": i, "nested": {"list": [1, "two", None], "scope": scope}},
            }
            response = api.client.post("/v1/events", json=event, headers=api.as_(key))
            assert response.status_code == 200, response.text
    return keys


def test_events_export_writes_exactly_the_scope_with_progress(api: Api, tmp_path: Path) -> None:
    keys = seed(api)
    for tenant, mode, key in [("t", "live", keys["t"]), ("t", "test", keys["t-test"]), ("u", "live", keys["u"])]:
        expected = sorted(list_all(api, key), key=lambda e: e["seq"])
        assert len(expected) == 30
        result = export(api.settings, tenant, "--mode", mode)
        exported = ndjson(result.stdout)
        assert exported == expected  # whole objects, in log order
        assert "exported 30 events" in result.stderr
        assert "exporting" in result.stderr and "━" in result.stderr  # the progress bar

    target = tmp_path / "out.ndjson"
    result = export(api.settings, "t", "-o", str(target))
    assert result.stdout == ""
    assert ndjson(target.read_bytes()) == sorted(list_all(api, keys["t"]), key=lambda e: e["seq"])

    assert export(api.settings, "nobody").stdout == ""


def pretty(body: Any) -> str:
    return json.dumps(body, indent=2)


def send_pretty_through_dialects(api: Api, key: str) -> None:
    """Eight events sent pretty-printed, as every vendor document's examples are, through
    several dialects."""
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    order = {"type": "order", "idempotency_key": "o-1", "data": {"items": [{"sku": "A1", "qty": 2}], "note": "a\nb"}}
    native_batch = {"events": [{"type": "keyless", "data": {"n": i, "nested": {"list": [i, None]}}} for i in range(3)]}
    track = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "messageId": "m-1",
        "properties": {"total": 9.5, "products": [{"sku": "A1"}]},
    }
    cloudevent = {"specversion": "1.0", "id": "c-1", "source": "/orders", "type": "placed", "data": {"a": {"b": [1]}}}
    binary = {"ce-specversion": "1.0", "ce-id": "c-2", "ce-source": "/orders", "ce-type": "paid"}
    purchase = {"type": "purchase", "customerId": "CUST-001", "data": {"orderId": "ORD-789", "amount": 49.99}}
    requests = [
        ("/v1/events", {"Content-Type": "application/json"}, order),
        ("/v1/events", {"Content-Type": "application/json"}, native_batch),
        ("/v1/track", {"Content-Type": "application/json", "Authorization": basic}, track),
        ("/v1/cloudevents", {"Content-Type": "application/cloudevents+json"}, cloudevent),
        ("/v1/cloudevents", {**binary, "Content-Type": "application/json"}, {"paid": {"amount": 3}}),
        ("/api/v1/events/ingest", {"Content-Type": "application/json"}, purchase),
    ]
    for path, headers, body in requests:
        response = api.client.post(path, content=pretty(body), headers={**api.as_(key), **headers})
        assert response.status_code in (200, 202), response.text


def test_events_sent_pretty_printed_export_and_tail_as_one_line_each(api: Api, tmp_path: Path) -> None:
    key = api.key("t")
    send_pretty_through_dialects(api, key)
    sent = 8
    stored = sorted(list_all(api, key), key=lambda e: e["seq"])
    assert len(stored) == sent

    result = export(api.settings, "t")
    assert f"exported {sent} events" in result.stderr
    lines = result.stdout.split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == sent
    assert [json.loads(line) for line in lines[:-1]] == stored
    assert all(line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False) for line in lines[:-1])

    tailed = run_cli("events", "tail", "--tenant", "t", "--from-start", "--count", str(sent), *at(api.settings))
    assert tailed.stdout == result.stdout

    dump = tmp_path / "export.ndjson"
    dump.write_text(result.stdout)
    target = tmp_path / "target"
    assert summary(import_(target, dump, "--tenant", "t")) == (sent, 0, 0)
    fields = ("type", "subject", "source", "channel", "time", "data")
    imported = ndjson(export(target, "t").stdout)
    assert [tuple(e[f] for f in fields) for e in imported] == [tuple(e[f] for f in fields) for e in stored]


# events import


def native_events(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "type": f"imported{i % 4}",
            "subject": f"cust_{i}",
            "channel": "pos" if i % 2 else None,
            "time": f"2026-03-{1 + i % 28:02d}T08:00:00+02:00",
            "idempotency_key": f"{prefix}-{i}",
            "data": {"n": i, "tags": ["a", i]},
        }
        for i in range(n)
    ]


def test_events_import_native_lines_with_dedup(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sent = native_events(120, "imp")
    path = write_lines(tmp_path / "native.ndjson", sent)

    first = import_(data_dir, path, "--tenant", "t", "--batch-size", "50")
    assert summary(first) == (120, 0, 0)
    assert count(data_dir) == 120
    stored = ndjson(export(data_dir, "t").stdout)
    assert [
        (e["type"], e["subject"], e["channel"], e["time"], e["idempotency_key"], e["data"], e["tenant"], e["mode"])
        for e in stored
    ] == [
        (
            s["type"],
            s["subject"],
            s["channel"],
            s["time"][:10] + "T06:00:00Z",
            s["idempotency_key"],
            s["data"],
            "t",
            "live",
        )
        for s in sent
    ]

    second = import_(data_dir, path, "--tenant", "t", "--batch-size", "50")
    assert summary(second) == (0, 120, 0)
    assert count(data_dir) == 120

    # Dedup is per tenant and mode: the same file into test mode is new data.
    assert summary(import_(data_dir, path, "--tenant", "t", "--mode", "test")) == (120, 0, 0)
    assert count(data_dir) == 240


def test_events_import_of_an_export_is_idempotent(tmp_path: Path) -> None:
    source = tmp_path / "source"
    originals = [
        {"type": "keyless", "subject": f"s{i}", "source": "app", "data": {"i": i}} for i in range(40)
    ] + native_events(10, "keyed")
    assert summary(import_(source, write_lines(tmp_path / "in.ndjson", originals), "--tenant", "src")) == (
        50,
        0,
        0,
    )
    exported_text = export(source, "src").stdout
    exported = ndjson(exported_text)
    assert len(exported) == 50 and sum(e["idempotency_key"] is None for e in exported) == 40
    dump = tmp_path / "export.ndjson"
    dump.write_text(exported_text)

    target = tmp_path / "target"
    assert summary(import_(target, dump, "--tenant", "t", "--mode", "test")) == (50, 0, 0)
    assert summary(import_(target, dump, "--tenant", "t", "--mode", "test")) == (0, 50, 0)
    assert count(target) == 50
    imported = ndjson(export(target, "t", "--mode", "test").stdout)
    fields = ("type", "subject", "source", "channel", "time", "data")
    assert [tuple(e[f] for f in fields) for e in imported] == [tuple(e[f] for f in fields) for e in exported]
    assert [e["idempotency_key"] for e in imported] == [e["idempotency_key"] or e["id"] for e in exported]
    assert {(e["tenant"], e["mode"]) for e in imported} == {("t", "test")}
    assert not {e["id"] for e in imported} & {e["id"] for e in exported}

    # Back into the store it came from: every line is its own original, keyed or not.
    assert summary(import_(source, dump, "--tenant", "src")) == (0, 50, 0)
    assert count(source) == 50
    assert ndjson(export(source, "src").stdout) == exported

    # The target's export (keyed by the old ids) back into the source adds nothing either,
    # and into a third store it is new data once.
    redump = tmp_path / "reexport.ndjson"
    redump.write_text(export(target, "t", "--mode", "test").stdout)
    assert summary(import_(source, redump, "--tenant", "src")) == (0, 50, 0)
    assert count(source) == 50
    third = tmp_path / "third"
    assert summary(import_(third, redump, "--tenant", "src")) == (50, 0, 0)
    assert summary(import_(third, dump, "--tenant", "src")) == (0, 50, 0)
    assert count(third) == 50


def test_events_import_of_an_export_with_schema_violations(api: Api, tmp_path: Path) -> None:
    key = api.key("t")
    schema = {"schema": {"type": "object", "required": ["amount"]}, "enforcement": "soft"}
    assert api.client.put("/v1/schemas/order", json=schema, headers=api.as_(key)).status_code == 201
    post(api, key, {"type": "order", "data": {"sku": "A1"}})
    exported = export(api.settings, "t").stdout
    assert "violations" in ndjson(exported)[0]
    dump = tmp_path / "export.ndjson"
    dump.write_text(exported)
    result = import_(tmp_path / "target", dump, "--tenant", "t", check=False)
    assert result.returncode == 0, result.stderr
    assert summary(result) == (1, 0, 0)


def test_events_import_rejects_bad_lines_with_line_numbers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = tmp_path / "mixed.ndjson"
    path.write_text(
        "\n".join(
            [
                '{"type": "ok", "idempotency_key": "g1"}',  # 1
                "{not json",  # 2
                "",  # 3 (blank lines are skipped)
                '{"type": ""}',  # 4
                "[1, 2]",  # 5
                '{"type": "ok", "bogus": 1}',  # 6
                '{"type": "ok", "idempotency_key": "g2", "data": {"x": 1}}',  # 7
                '{"type": "ok", "data": [1]}',  # 8
                '{"type": "ok", "time": "yesterday"}',  # 9
            ]
        )
        + "\n"
    )
    result = import_(data_dir, path, "--tenant", "t", "--batch-size", "3", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result) == (2, 0, 6)
    assert re.findall(r"^rejected line (\d+):", result.stderr, re.M) == ["2", "4", "5", "6", "8", "9"]
    assert re.search(r"^rejected line 6:.*bogus", result.stderr, re.M)
    assert re.search(r"^rejected line 8: data:", result.stderr, re.M)
    assert query(data_dir / "headwater.db", "SELECT idempotency_key, data FROM events ORDER BY seq") == [
        ("g1", "{}"),
        ("g2", '{"x": 1}'),
    ]


# events tail


def wait_until_reading(proc: subprocess.Popen[bytes], settings: Settings, timeout: float = 20) -> None:
    """Until `tail` has read the log's end, which it reads first."""
    if settings.store is None:
        wait_until_reading_sqlite(proc, settings.data_dir / MAIN_FILE, timeout)
    else:
        asyncio.run(wait_until_reading_postgres(proc, settings.store, timeout))


def wait_until_reading_sqlite(proc: subprocess.Popen[bytes], db: Path, timeout: float) -> None:
    """Until `tail` has opened its read connection, plus a margin."""
    deadline = time.monotonic() + timeout
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline:
        assert proc.poll() is None, "tail exited early"
        with contextlib.suppress(OSError):
            if sum(1 for fd in fd_dir.iterdir() if os.readlink(fd) == str(db)) >= 2:
                time.sleep(0.3)
                return
        time.sleep(0.02)
    raise TimeoutError("tail did not start reading")


# PostgreSQL's log read by offset (`PgLog.read_log`), as the server shows it in pg_stat_activity.
READ_LOG = "%FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"


async def wait_until_reading_postgres(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Until the server has seen three reads of the log by offset (only `tail` reads so here):
    the end takes two (the old events, then none), so the third is the tail following it."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(url)
    try:
        seen: set[tuple[int, Any]] = set()
        while len(seen) < 3:
            assert proc.poll() is None, "tail exited early"
            if time.monotonic() > deadline:
                raise TimeoutError("tail did not start reading")
            rows = await conn.fetch(
                "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND query LIKE $1",
                READ_LOG,
            )
            seen.update((row["pid"], row["query_start"]) for row in rows)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def tail(api: Api, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*HEADWATER, "events", "tail", "--interval", "0.05", *at(api.settings), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return ndjson(out)


def post(api: Api, key: str, event: dict[str, Any]) -> str:
    response = api.client.post("/v1/events", json=event, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["id"])


def fetch(api: Api, key: str, event_id: str) -> dict[str, Any]:
    return dict(api.client.get(f"/v1/events/{event_id}", headers=api.as_(key)).json())


def test_events_tail_count_prints_only_new_events(api: Api) -> None:
    key, other = api.key("t"), api.key("u")
    for i in range(3):
        post(api, key, {"type": "old", "data": {"i": i}})
    proc = tail(api, "--tenant", "t", "--count", "3")
    wait_until_reading(proc, api.settings)
    ids = []
    for i in range(3):
        post(api, other, {"type": "other_tenant"})
        ids.append(post(api, key, {"type": "new", "subject": f"s{i}", "data": {"i": i}}))
    printed = finish(proc)
    assert printed == [fetch(api, key, i) for i in ids]


def test_events_tail_from_start(api: Api) -> None:
    key, test_key = api.key("t"), api.key("t", mode="test")
    ids = [post(api, key, {"type": "old", "data": {"i": i}}) for i in range(2)]
    post(api, test_key, {"type": "test_mode"})
    proc = tail(api, "--tenant", "t", "--from-start", "--count", "3")
    ids.append(post(api, key, {"type": "new"}))
    printed = finish(proc)
    assert printed == [fetch(api, key, i) for i in ids]


def test_every_option_reads_a_headwater_variable(tmp_path: Path) -> None:
    """Options without a named variable read HEADWATER_<COMMAND>_<OPTION>."""
    data_dir = tmp_path / "data"
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(json.dumps({"type": "t", "idempotency_key": f"k{i}"}) for i in range(3)) + "\n")
    env = {"HEADWATER_DATA_DIR": str(data_dir), "HEADWATER_TENANT": "envt"}
    run_cli("events", "import", str(source), env={**env, "HEADWATER_EVENTS_IMPORT_BATCH_SIZE": "2"})
    target = tmp_path / "out.ndjson"
    run_cli("events", "export", env={**env, "HEADWATER_EVENTS_EXPORT_OUTPUT": str(target)})
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(e["tenant"], e["idempotency_key"]) for e in exported] == [("envt", "k0"), ("envt", "k1"), ("envt", "k2")]
    tail = run_cli("events", "tail", "--from-start", env={**env, "HEADWATER_EVENTS_TAIL_COUNT": "2"})
    assert [json.loads(line)["idempotency_key"] for line in tail.stdout.splitlines()] == ["k0", "k1"]
