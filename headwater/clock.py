"""Time: the one place that reads the clock (so tests can move it) and the integer
microsecond form that storage and cursors use."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def system_now() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]


def to_us(value: datetime) -> int:
    return (value - EPOCH) // ONE_US


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)
