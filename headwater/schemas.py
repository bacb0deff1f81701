"""Per-tenant, per-mode, per-type JSON Schemas (draft 2020-12): compiling them safely and checking `data`.

A schema comes from a tenant, so it is untrusted: its size is capped, `pattern`s run on
the linear-time regex engine with bounded memory, and nothing is ever fetched for a `$ref`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jsonschema_rs
import msgspec

from headwater.events import FieldError, Mode
from headwater.storage.base import Store
from headwater.storage.registry import Enforcement, SchemaVersion

MAX_SCHEMA_BYTES = 64 * 1024
MAX_ERRORS = 50
# The regex crate guarantees linear-time matching; these cap what one pattern may cost in memory.
_PATTERNS = jsonschema_rs.RegexOptions(size_limit=256 * 1024, dfa_size_limit=1024 * 1024)


class SchemaError(ValueError):
    """A schema that cannot be used, with a message for the client."""


def compile_schema(schema: bytes) -> jsonschema_rs.Draft202012Validator:
    if len(schema) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"schema is larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        document = msgspec.json.decode(schema)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SchemaError(f"schema is not valid JSON: {exc}") from None
    if not isinstance(document, dict | bool):
        raise SchemaError("a schema must be a JSON object (or a boolean)")
    try:
        jsonschema_rs.meta.validate(document)
        return jsonschema_rs.Draft202012Validator(
            document, validate_formats=True, pattern_options=_PATTERNS, offline=True
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaError(f"not a usable JSON Schema: {str(exc).splitlines()[0]}") from None


class CompiledSchema:
    __slots__ = ("enforcement", "type", "validator", "version")

    def __init__(self, version: SchemaVersion) -> None:
        self.type = version.type
        self.version = version.version
        self.enforcement: Enforcement = version.enforcement
        self.validator = compile_schema(bytes(version.schema))

    def check(self, data: msgspec.Raw) -> list[FieldError]:
        """The problems with `data`, as field errors under `data.`; empty when it conforms."""
        instance: Any = msgspec.json.decode(data)
        if self.validator.is_valid(instance):
            return []
        problems = []
        for error in self.validator.iter_errors(instance):
            parts = ["data", *map(str, error.instance_path)]
            missing = getattr(error.kind, "property", None)
            if isinstance(missing, str):  # `required`: point at the absent field itself
                parts.append(missing)
            problems.append(FieldError(".".join(parts), f"schema.{_snake(error.kind.name)}", error.message))
            if len(problems) >= MAX_ERRORS:
                break
        return problems


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


class SchemaRegistry:
    """The current schema of every type of a tenant and mode, compiled once per version.

    A scope's set is re-read after `ttl` seconds, so a schema stored by another process
    takes effect within that time; this process's own changes call `forget`.
    """

    def __init__(self, store: Store, ttl: float = 1.0) -> None:
        self.store = store
        self.ttl = ttl
        self._scopes: dict[tuple[str, Mode], tuple[dict[str, CompiledSchema], float]] = {}
        self._compiled: dict[tuple[str, Mode, str, int], CompiledSchema] = {}
        self._lock = asyncio.Lock()

    def forget(self, tenant: str, mode: Mode) -> None:
        self._scopes.pop((tenant, mode), None)

    async def for_scope(self, tenant: str, mode: Mode) -> dict[str, CompiledSchema]:
        cached = self._scopes.get((tenant, mode))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._lock:
            # Requests that waited for the lock find the set the first of them read: one read
            # per expiry, not one per request in flight (32 in a row under load).
            cached = self._scopes.get((tenant, mode))
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            versions = await self.store.registry.latest_schemas(tenant, mode)
            current: dict[str, CompiledSchema] = {}
            for version in versions:
                key = (tenant, mode, version.type, version.version)
                compiled = self._compiled.get(key)
                if compiled is None:
                    compiled = self._compiled[key] = CompiledSchema(version)
                current[version.type] = compiled
            self._scopes[(tenant, mode)] = (current, time.monotonic() + self.ttl)
            return current
