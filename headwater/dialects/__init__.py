"""Foreign APIs ("dialects"): each module translates its requests to canonical events,
calls the one pipeline, and shapes the result as its API documents.

A dialect module provides:
- `NAME`: a short name, recorded on quarantined items so a replay re-reads them the same way;
- `routes(services)`: its Starlette routes;
- `read_item(raw)`: one raw item of its request → an `EventDraft` or a `Rejection`.
"""

from __future__ import annotations

from types import ModuleType

from headwater.dialects import analytics, cloudevents, customer_events, data_events, gamification, segment

ALL: list[ModuleType] = [data_events, analytics, customer_events, gamification, segment, cloudevents]
