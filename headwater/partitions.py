"""Partitions: how the log is split so that workers can share it.

An event's partition is a stable hash of (tenant, mode, subject) over the store's partition
count, which is fixed when the store is created and recorded in it. Everything the
consumers derive (windows, cooldowns, enrolments, profiles, progress, completions, badges,
points) is per subject, so two partitions never share state, and the workers holding
different partitions never contend. Order is kept per partition, hence per subject.
"""

from __future__ import annotations

import zlib

from headwater.events import Mode

DEFAULT_PARTITIONS = 8
MAX_PARTITIONS = 256


def partition_of(tenant: str, mode: Mode | str, subject: str | None, count: int) -> int:
    """CRC-32 of the three, NUL-separated (a subject cannot shift into the tenant's part):
    the same on every machine and Python version, unlike `hash()`."""
    if count == 1:
        return 0
    key = f"{tenant}\x00{mode}\x00{subject or ''}".encode()
    return zlib.crc32(key) % count
