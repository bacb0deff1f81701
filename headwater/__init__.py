"""Headwater: a self-hosted, multi-tenant event ingestion service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.client import AsyncClient, Client

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the server imports `headwater` too, and needs neither the client nor httpx.
    if name in ("Client", "AsyncClient"):
        from headwater import client

        return getattr(client, name)
    raise AttributeError(f"module 'headwater' has no attribute {name!r}")
