"""Headwater's native HTTP API, one module per resource."""
