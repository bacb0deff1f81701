"""The web console at `/console`: pages served by Headwater itself, no build step, no CDN."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
