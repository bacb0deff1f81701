"""The container image and the compose topology, as far as this machine can run them.

No container engine runs here (Debian's docker client is installed, no daemon; Docker Hub,
where the base images live, is out of reach), so the image itself is built only where
`docker info` answers. What the files say is run for real everywhere: compose.yaml's
Headwater services, each with its own command and environment on top of the Dockerfile's
`ENV`, against a real PostgreSQL and redis-server (the service names swapped for their
addresses), and the Dockerfile's `HEALTHCHECK` command against them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import HEADWATER, ROOT, flush, free_port, run_cli
from tests.servers import Postgres, Redis


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_the_image_runs_as_a_non_root_user_with_its_data_in_a_volume_and_checks_healthz() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    (user,) = instruction("USER")
    assert user not in ("root", "0")
    env = image_env()
    assert json.loads(instruction("VOLUME")[0]) == [env["HEADWATER_DATA_DIR"]]
    assert env["HEADWATER_HOST"] == "0.0.0.0"
    assert json.loads(instruction("CMD")[0]) == ["headwater", "serve"]
    (check,) = instruction("HEALTHCHECK")
    assert "/healthz" in check
    # What the image copies is what the package needs to install, and exists.
    for rest in instruction("COPY"):
        *sources, _ = rest.split()
        assert all((ROOT / s).exists() for s in sources), rest


def health_command() -> list[str]:
    (check,) = instruction("HEALTHCHECK")
    command: list[str] = json.loads(check.split(" CMD ", 1)[1])
    return command


class Service:
    """One of compose.yaml's Headwater services, run as a process on this machine."""

    def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], data_dir: Path) -> None:
        command = spec["command"]
        assert command[0] == "headwater", command
        self.name = name
        self.port = free_port()
        self.env = {**os.environ, **image_env(), **env, "HEADWATER_PORT": str(self.port)}
        self.env["HEADWATER_DATA_DIR"] = str(data_dir)
        self.env["HEADWATER_SYNC_TIMEOUT"] = "60"  # under the suite's load, as every test server waits
        self.log = data_dir.parent / f"{name}.log"
        data_dir.mkdir(parents=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*HEADWATER, *command[1:]], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def output(self) -> str:
        return self.log.read_text()

    def healthy(self) -> bool:
        """The Dockerfile's HEALTHCHECK, as the engine would run it inside the container."""
        command = [sys.executable if part == "python" else part for part in health_command()]
        return subprocess.run(command, env=self.env, capture_output=True, check=False).returncode == 0

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited: {self.output()}"
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy: {self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def local(value: str, postgres_url: str, redis_url: str, variables: dict[str, str]) -> str:
    """A compose value with the postgres and redis services' addresses swapped for the suite's
    (and compose's database for a fresh one of the suite's server), and `${NAME:?message}`
    interpolated as compose does, from `variables` (a .env file's)."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: variables[m[1]], value)
    value = re.sub(r"^postgresql://[^@]*@postgres:5432/\w+$", postgres_url, value)
    return re.sub(r"^redis://redis:6379/", redis_url.rsplit("/", 1)[0] + "/", value)


def in_start_order(services: dict[str, Any]) -> list[str]:
    ordered: list[str] = []
    while len(ordered) < len(services):
        for name, spec in services.items():
            needs = spec.get("depends_on", {})
            if name not in ordered and all(n in ordered for n in needs):
                ordered.append(name)
    return ordered


@pytest.fixture
def topology(postgres: Postgres, redis: Redis, tmp_path: Path) -> Iterator[dict[str, Service]]:
    database = postgres.new_database()
    flush(redis)
    url = postgres.url(database)
    services = compose()["services"]
    variables = {"HEADWATER_SECRET_KEY": base64.b64encode(os.urandom(32)).decode()}
    started: dict[str, Service] = {}
    try:
        for name in in_start_order(services):
            spec = services[name]
            if "build" not in spec:
                continue  # postgres and redis: the suite's own servers stand in for them
            env = {k: local(str(v), url, redis.url, variables) for k, v in spec["environment"].items()}
            started[name] = service = Service(name, spec, env, tmp_path / name)
            # depends_on's service_healthy: the next one starts once this one's check passes.
            if spec.get("healthcheck", {}).get("disable") is not True:
                service.wait_healthy()
        yield started
    finally:
        for service in started.values():
            service.stop()
        postgres.drop_database(database)


def test_the_compose_topology_runs_two_apis_and_two_workers_on_one_store_and_bus(
    topology: dict[str, Service],
) -> None:
    assert sorted(topology) == ["api-1", "api-2", "worker-1", "worker-2"]
    # The first API made tenant `default` and printed its admin key, once; the second did not.
    keys = re.findall(r"hw_live_\w+", topology["api-1"].output())
    assert len(keys) == 1, topology["api-1"].output()
    assert "hw_live_" not in topology["api-2"].output()
    headers = {"Authorization": f"Bearer {keys[0]}"}
    first = f"http://127.0.0.1:{topology['api-1'].port}"
    second = f"http://127.0.0.1:{topology['api-2'].port}"
    with httpx.Client(timeout=90, headers=headers) as client:
        for base in (first, second):
            assert client.get(base + "/readyz").json() == {"status": "ready", "store": "ok", "bus": "ok"}
        # Sent to the second API, processed by a worker, read from the first.
        trigger = client.post(
            second + "/v1/triggers",
            json={"name": "every order", "event_types": ["order"], "action": {"type": "journey_enroll",
                  "config": {"journeyId": "jr_1"}}},
        )  # fmt: skip
        assert trigger.status_code == 201, trigger.text
        sent = client.post(second + "/v1/events?wait=processed", json={"type": "order", "subject": "c1"})
        assert sent.status_code == 200, sent.text
        (result,) = sent.json()["results"]
        assert result["status"] == "accepted"
        assert [t["trigger_id"] for t in result["triggers_matched"]] == [trigger.json()["id"]]
        assert [a["status"] for a in result["actions"]] == ["dispatched"]
        assert client.get(first + f"/v1/events/{result['id']}").json()["subject"] == "c1"
    # Both workers hold partitions: the processing is split between them.
    report = json.loads(run_cli("status", "--json", env=topology["api-1"].env).stdout)
    owners = {c["owner"] for c in report["consumers"] if c["owner"]}
    assert len(owners) == 2, report
    for service in topology.values():
        assert "warning" not in service.output().lower(), (service.name, service.output())
        assert "Traceback" not in service.output(), (service.name, service.output())


def engine() -> str | None:
    """A container engine that answers, or None."""
    for name in ("podman", "docker"):
        if shutil.which(name) and subprocess.run([name, "info"], capture_output=True, check=False).returncode == 0:
            return name
    return None


@pytest.mark.skipif(engine() is None, reason="no container engine runs on this machine (see the README's Container)")
def test_the_image_builds_and_answers_healthz_from_a_container(tmp_path: Path) -> None:
    name = engine()
    assert name is not None
    tag = "headwater-test:latest"
    subprocess.run([name, "build", "-t", tag, str(ROOT)], check=True, capture_output=True, timeout=900)
    port = free_port()
    run = subprocess.run(
        [name, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", tag], check=True, capture_output=True, text=True
    )
    container = run.stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise TimeoutError("the container's /healthz did not answer")
        user = subprocess.run([name, "exec", container, "id", "-u"], check=True, capture_output=True, text=True)
        assert user.stdout.strip() != "0"
    finally:
        subprocess.run([name, "rm", "-f", container], capture_output=True, check=False)
