"""Headwater: a self-hosted, multi-tenant event ingestion service."""

__version__ = "0.1.0"
