"""Identifiers: time-ordered event ids and API key material."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7_hex() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits; monotonic within this process.

    The 12-bit `rand_a` field is a counter within the same millisecond (method 1
    of RFC 9562 section 6.2), so ids sort in creation order.
    """
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | random.getrandbits(62)
    return f"{value:032x}"


def new_event_id() -> str:
    return "evt_" + uuid7_hex()


def new_prefixed_id(prefix: str) -> str:
    return f"{prefix}_{uuid7_hex()}"


def new_api_key(mode: str) -> str:
    # 32 bytes from the OS CSPRNG: 256 bits, well above the 128 the keys need.
    return f"hw_{mode}_{secrets.token_urlsafe(32)}"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
