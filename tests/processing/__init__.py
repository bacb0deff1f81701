"""Helpers shared by the processing tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Protocol

from headwater.config import Settings
from headwater.partitions import DEFAULT_PARTITIONS, partition_of
from headwater.processing.awards import MAX_AWARD_DEPTH
from tests.conftest import Api


class Answer(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...


def settlers(tenant: str, partitions: int) -> list[dict[str, Any]]:
    """An event in every partition, of a subject that is no test's participant."""
    subjects: dict[int, str] = {}
    for n in itertools.count():
        subjects.setdefault(partition_of(tenant, "live", f"settler-{n}", partitions), f"settler-{n}")
        if len(subjects) == partitions:
            break
    return [{"type": "settle", "subject": subject} for subject in subjects.values()]


def settle_with(send: Callable[[dict[str, Any]], Answer], tenant: str, settings: Settings) -> None:
    """Until every award chain is processed. Award events are appended after the events that
    caused them, in their participants' partitions, and may cause more; `?wait=processed`
    waits for its own events' partitions only. So `send` posts (with `?wait=processed`) an
    event to every partition, once per possible generation: a round is processed once the
    awards that the round before caused are."""
    events = settlers(tenant, settings.partitions or DEFAULT_PARTITIONS)
    for _ in range(MAX_AWARD_DEPTH + 1):
        response = send({"events": events})
        assert response.status_code == 200, response.text


def settle(api: Api, key: str, tenant: str = "acme") -> None:
    """`settle_with` through the test client, for the key's tenant (`api.key()`'s by default)."""
    settle_with(
        lambda body: api.client.post("/v1/events?wait=processed", json=body, headers=api.as_(key)), tenant, api.settings
    )
