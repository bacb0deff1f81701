"""Settings. Each is one declaration: a default and the `Form` of its text. A field not passed
in reads `HEADWATER_<NAME>`, and every bad value is reported at once, naming the variable, the
value and the form expected (the CLI checks them all before a command runs)."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from headwater.partitions import MAX_PARTITIONS

T = TypeVar("T")
PREFIX = "HEADWATER_"


@dataclass(frozen=True)
class Form(Generic[T]):
    """How a setting's text is read (`parse` raises ValueError), and what to tell someone
    whose text is not that."""

    parse: Callable[[str], T]
    expected: str
    metavar: str = "TEXT"  # how a flag's help names it

    def read(self, where: str, text: str) -> T:
        try:
            return self.parse(text)
        except ValueError:
            raise SettingError(f"{where}={text!r} is not valid: expected {self.expected}") from None


class SettingError(ValueError):
    """One bad setting, as the one line that explains it."""


class SettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _whole(text: str, low: int, high: int | None) -> int:
    value = int(text.strip())
    if value < low or (high is not None and value > high):
        raise ValueError(text)
    return value


def _seconds(text: str) -> float:
    value = float(text.strip())
    if not (math.isfinite(value) and 0 <= value < 10**7):
        raise ValueError(text)
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise ValueError(text)
    return value


def parse_schedule(value: str) -> tuple[float, ...]:
    """Comma-separated seconds, e.g. `0,5,300`: the wait before each delivery attempt."""
    schedule = tuple(_seconds(part) for part in value.split(",") if part.strip())
    if not schedule:
        raise ValueError(f"not a retry schedule of comma-separated seconds: {value!r}")
    return schedule


_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _switch(text: str) -> bool:
    if text.strip().lower() not in _SWITCH:
        raise ValueError(text)
    return _SWITCH[text.strip().lower()]


def _path(text: str) -> Path:
    if not text.strip() or Path(text).is_file():
        raise ValueError(text)
    return Path(text)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


def whole(what: str, example: int, low: int = 1, high: int | None = None) -> Form[int]:
    limits = f"{low} or more" if high is None else f"from {low} to {high}"
    return Form(lambda text: _whole(text, low, high), f"a whole number of {what} ({limits}), e.g. {example}", "N")


def choice(*values: str) -> Form[str]:
    def pick(text: str) -> str:
        if text.lower() not in values:
            raise ValueError(text)
        return text.lower()

    return Form(pick, "one of " + ", ".join(values), "[" + "|".join(values) + "]")


def optional(form: Form[T]) -> Form[T | None]:
    """The form, or empty text for "not set"."""
    return Form(lambda text: form.parse(text) if text.strip() else None, f"{form.expected}, or nothing", form.metavar)


TEXT = Form(_text, "a non-empty value")
PATH = Form(_path, "a directory (new or existing), e.g. ./headwater-data", "DIRECTORY")
PORT = Form(lambda text: _whole(text, 1, 65535), "a port number from 1 to 65535, e.g. 8000", "PORT")
SECONDS = Form(_seconds, "a number of seconds (0 or more), e.g. 0.5", "SECONDS")
POSITIVE_SECONDS = Form(_positive_seconds, "a number of seconds (more than 0), e.g. 10", "SECONDS")
SCHEDULE = Form(parse_schedule, "comma-separated seconds, e.g. 0,5,300", "SECONDS,...")
SWITCH = Form(_switch, "1 or 0 (or true/false, yes/no, on/off)", "[1|0]")
LOG_LEVEL = choice("critical", "error", "warning", "info", "debug", "trace")


class _FromEnvironment:
    def __repr__(self) -> str:
        return "<from the environment>"


_FROM_ENVIRONMENT: Any = _FromEnvironment()


def setting(default: T, form: Form[T]) -> T:
    """A `Settings` field: `default`, unless `HEADWATER_<FIELD NAME>` holds text of `form`."""
    declared: T = field(default=_FROM_ENVIRONMENT, metadata={"default": default, "form": form})
    return declared


def variable(name: str) -> str:
    return PREFIX + name.upper()


@dataclass(frozen=True)
class Settings:
    """What the server and the commands run with. A new setting is one line here: its name
    (the variable is HEADWATER_<NAME>), type, default and form; the checks at start, the error
    lines and the unknown-variable hints follow from it (and tests/test_config.py wants it in the
    README's tables)."""

    data_dir: Path = setting(Path("./headwater-data"), PATH)
    max_body_bytes: int = setting(5 * 1024 * 1024, whole("bytes", 5242880))
    max_batch_events: int = setting(1000, whole("events", 1000))
    max_json_depth: int = setting(64, whole("levels", 64))
    queue_max_events: int = setting(200_000, whole("events", 200000))
    key_cache_seconds: float = setting(0.5, SECONDS)
    sync_timeout: float = setting(10.0, POSITIVE_SECONDS)
    catalog_interval: float = setting(1.0, POSITIVE_SECONDS)
    # None: the Segment dialect's own default (headwater.dialects.segment.SKEW_THRESHOLD_SECONDS).
    segment_skew_seconds: float | None = setting(None, optional(SECONDS))

    # Processing (headwater.processing.worker). None: the count the data dir was created with
    # (8 for a new one); a count that differs from the recorded one is refused.
    partitions: int | None = setting(None, optional(whole("partitions", 8, high=MAX_PARTITIONS)))
    lease_seconds: float = setting(10.0, POSITIVE_SECONDS)

    # Webhook delivery (headwater.processing.webhooks).
    webhook_retry_schedule: tuple[float, ...] = setting((0, 5, 300, 1800, 7200, 18000, 36000, 36000), SCHEDULE)
    webhook_timeout: float = setting(10.0, POSITIVE_SECONDS)
    webhook_rotation_grace: float = setting(86400.0, SECONDS)
    webhook_max_retry_after: float = setting(3600.0, SECONDS)
    webhook_concurrency: int = setting(16, whole("requests", 16))
    webhook_poll_interval: float = setting(0.5, POSITIVE_SECONDS)
    # Off: this process only enqueues; another process (a worker) sends.
    webhook_worker: bool = setting(True, SWITCH)
    allow_private_webhooks: bool = setting(False, SWITCH)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            if getattr(self, f.name) is not _FROM_ENVIRONMENT:
                continue
            value = f.metadata["default"]
            text = os.environ.get(variable(f.name))
            if text is not None:
                try:
                    value = f.metadata["form"].read(variable(f.name), text)
                except SettingError as exc:
                    problems.append(str(exc))
            object.__setattr__(self, f.name, value)
        if problems:
            raise SettingsError(problems)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def variables(cls) -> list[str]:
        return [variable(f.name) for f in fields(cls)]


def environment_problems() -> list[str]:
    """Every bad `HEADWATER_*` setting in the environment, one line each."""
    try:
        Settings()
    except SettingsError as exc:
        return exc.problems
    return []


def unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[tuple[str, str | None]]:
    """`HEADWATER_*` variables that nothing reads, each with the closest known name (or None)."""
    # Compared without the prefix, which every name shares and which would make any two look alike.
    names = {name.removeprefix(PREFIX): name for name in known}
    unknown = sorted(name for name in environ if name.startswith(PREFIX) and name not in known)
    closest = {name: difflib.get_close_matches(name.removeprefix(PREFIX), names, n=1) for name in unknown}
    return [(name, names[closest[name][0]] if closest[name] else None) for name in unknown]
