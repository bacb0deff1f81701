"""Compiled definitions per tenant and mode: what an event can cause there.

One cache for every kind (triggers and type mappings, webhook endpoints, challenges,
badges, settings), compiled once per change. `refresh` costs one read of the registry's
version counter; a consumer calls it after reading a page of the log, so a definition
committed before an event was appended is always in force when that event is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from headwater.events import Mode
from headwater.processing.gamification import ChallengeIn, ChallengeSet, compile_challenge
from headwater.processing.rules import DEFAULT_TYPE_MAPPINGS, TriggerIn, TriggerSet, compile_trigger
from headwater.storage.registry import DefinitionKind, GamificationSettings, Registry

Scope = tuple[str, Mode]
_decode_rule = msgspec.json.Decoder(TriggerIn)
_decode_challenge = msgspec.json.Decoder(ChallengeIn)


def topic_matches(subscription: str, topic: str) -> bool:
    """`action.recommend` matches only itself; `action.*` matches every `action.` topic."""
    if subscription.endswith(".*"):
        return topic.startswith(subscription[:-1])
    return subscription == topic


@dataclass(frozen=True)
class ScopeDefinitions:
    """Everything one tenant and mode has defined, compiled."""

    triggers: TriggerSet
    # Enabled webhook endpoints: id -> the topics it subscribes to, in creation order.
    endpoints: dict[str, tuple[str, ...]]
    challenges: ChallengeSet
    badges: frozenset[str]

    @property
    def settings(self) -> GamificationSettings:
        return self.challenges.settings

    @property
    def routes(self) -> bool:
        """Whether its events can fire a trigger or reach an endpoint."""
        return bool(self.triggers) or bool(self.endpoints)

    def subscribers(self, topic: str) -> list[str]:
        """The enabled endpoints subscribed to `topic`, in creation order."""
        return [id_ for id_, topics in self.endpoints.items() if any(topic_matches(t, topic) for t in topics)]


class _Look:
    """One read of the registry's version, which the refreshes that ask before it begins share."""

    def __init__(self) -> None:
        self.begun = False
        self.task: asyncio.Future[int] | None = None


class Definitions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._version = -1
        self._scopes: dict[Scope, ScopeDefinitions] = {}
        self._kinds: dict[DefinitionKind, frozenset[Scope]] = {}
        self._look: _Look | None = None

    @property
    def version(self) -> int:
        """The registry's version the cache holds."""
        return self._version

    async def refresh(self) -> bool:
        """Drop what is cached when any process changed any definition since the last look;
        True when it did. The version is read before anything is loaded: a change committed
        during a load bumps it past what was read, and the next refresh loads again.

        The consumers of a worker share the cache and wake together: their refreshes share one
        read, but only a read that begins after a refresh was asked for, so each still sees
        every change committed before it asked."""
        look = self._look
        if look is None or look.begun:
            look = self._look = _Look()
            look.task = asyncio.ensure_future(self._read_version(look))
        assert look.task is not None
        version = await asyncio.shield(look.task)
        if version <= self._version:
            return False
        self._scopes.clear()
        self._kinds.clear()
        self._version = version
        return True

    async def _read_version(self, look: _Look) -> int:
        look.begun = True
        try:
            return await self.registry.definitions_version()
        finally:
            if self._look is look:
                self._look = None

    async def scopes_with(self, *kinds: DefinitionKind) -> frozenset[Scope]:
        found: set[Scope] = set()
        for kind in kinds:
            scopes = self._kinds.get(kind)
            if scopes is None:
                scopes = self._kinds[kind] = frozenset(await self.registry.scopes_with(kind))
            found |= scopes
        return frozenset(found)

    async def for_scopes(self, scopes: Iterable[Scope]) -> dict[Scope, ScopeDefinitions]:
        found: dict[Scope, ScopeDefinitions] = {}
        for scope in scopes:
            loaded = self._scopes.get(scope)
            if loaded is None:
                loaded = self._scopes[scope] = await self._load(*scope)
            found[scope] = loaded
        return found

    async def _load(self, tenant: str, mode: Mode) -> ScopeDefinitions:
        registry = self.registry
        triggers = [
            compile_trigger(r.id, _decode_rule.decode(r.definition), order)
            for order, r in enumerate(await registry.list_triggers(tenant, mode))
        ]
        mappings = await registry.get_type_mappings(tenant, mode)
        endpoints = {e.id: tuple(e.subscriptions) for e in await registry.list_webhooks(tenant, mode) if e.enabled}
        challenges = [
            compile_challenge(r.id, _decode_challenge.decode(r.definition), order)
            for order, r in enumerate(await registry.list_challenges(tenant, mode))
        ]
        settings = await registry.get_settings(tenant, mode) or GamificationSettings()
        badges = frozenset(b.key for b in await registry.list_badges(tenant, mode))
        return ScopeDefinitions(
            triggers=TriggerSet(triggers, DEFAULT_TYPE_MAPPINGS if mappings is None else mappings),
            endpoints=endpoints,
            challenges=ChallengeSet(challenges, settings),
            badges=badges,
        )
