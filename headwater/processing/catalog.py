"""The event catalog: per tenant, mode and type, how many events, when first and last seen,
how many a soft schema flagged, and the properties of `data` with their JSON types.

One consumer follows the whole log (it counts across subjects, so across partitions), under
one lease, and folds each page in Python: counts exactly; property names and types from
every event of a type the catalog has not seen yet and from a 1-in-16 sample of the rest
(walking every event's JSON cost a fifth of the ingest CPU, so a property that only rare
events carry may take a while to appear). Only the top level of `data` is read, and each
value's type is told from its first byte, without decoding it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from headwater.events import Mode
from headwater.storage.base import Store
from headwater.storage.effects import CatalogProperty, CheckpointMove, EffectBatch, Effects
from headwater.storage.log import EventSummary
from headwater.storage.records import WHOLE_LOG, CatalogCount

NAME = "catalog"
PROPERTY_SAMPLE = 16
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_KINDS = {ord('"'): "string", ord("{"): "object", ord("["): "array", ord("t"): "boolean", ord("f"): "boolean",
          ord("n"): "null"}  # fmt: skip


def json_type(raw: bytes) -> str:
    """The JSON Schema type of an encoded value; `integer` for a number without a fraction or
    exponent, as SQLite's `json_each` named them before."""
    kind = _KINDS.get(raw[0]) if raw else None
    if kind is not None:
        return kind
    return "number" if any(c in raw for c in b".eE") else "integer"


def fold(
    events: Sequence[EventSummary], known: set[tuple[str, Mode, str]], datas: dict[int, bytes] | None = None
) -> Effects:
    """What a page of the log adds to the catalog; `known` holds the (tenant, mode, type)
    entries the catalog had before it, `datas` the `data` (by offset) of the events of the
    others that the summaries came without."""
    datas = datas or {}
    counts: dict[tuple[str, Mode, str], list[int]] = {}  # [count, first µs, last µs, violations]
    properties: set[CatalogProperty] = set()
    for event in events:
        key = (event.tenant, event.mode, event.type)
        received = event.received_us
        entry = counts.get(key)
        if entry is None:
            counts[key] = entry = [0, received, received, 0]
        entry[0] += 1
        entry[1] = min(entry[1], received)
        entry[2] = max(entry[2], received)
        if event.flagged:
            entry[3] += 1
        data = event.data
        if data is None and key not in known:
            data = datas.get(event.seq)
        if data is not None:
            try:
                fields = _top_level.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # a `data` that is not an object (an older event) has no properties
            properties.update(CatalogProperty(*key, name, json_type(bytes(raw))) for name, raw in fields.items())
    effects = Effects()
    effects.catalog = [CatalogCount(*key, *entry) for key, entry in counts.items()]
    effects.properties = sorted(properties)
    return effects


class CatalogConsumer:
    def __init__(self, store: Store, owner: str | None = None, lease: str | None = None, batch_size: int = 20_000):
        self.store = store
        self.owner = owner
        self.lease = lease
        self.batch_size = batch_size
        self.position: int | None = None
        self.last_run = 0.0

    async def run_once(self) -> int:
        """Fold one page; returns how many events it covered."""
        self.last_run = time.monotonic()
        derived = self.store.derived
        if self.position is None:
            self.position = await derived.checkpoint(NAME, WHOLE_LOG)
        events = await self.store.log.read_summaries(self.position, self.batch_size, PROPERTY_SAMPLE)
        if not events:
            return 0
        end = events[-1].seq
        known = await derived.catalog_types(sorted({(e.tenant, e.mode) for e in events}))
        # Every event of a type the catalog has not seen gives its properties; those are rare
        # once a tenant's types are known, so their `data` is read apart.
        unseen = [e.seq for e in events if e.data is None and (e.tenant, e.mode, e.type) not in known]
        datas = {e.seq or 0: bytes(e.data) for e in await self.store.log.get_events(unseen)} if unseen else {}
        effects = fold(events, known, datas)
        batch = EffectBatch(
            WHOLE_LOG, effects, CheckpointMove(NAME, WHOLE_LOG, self.position, end), self.owner, self.lease
        )
        self.position = end if await derived.apply(batch) else None
        return len(events)
