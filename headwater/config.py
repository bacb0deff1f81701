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
from headwater.sealing import SecretKey, parse_secret_key

T = TypeVar("T")
PREFIX = "HEADWATER_"


@dataclass(frozen=True)
class Form(Generic[T]):
    """How a setting's text is read (`parse` raises ValueError), and what to tell someone
    whose text is not that."""

    parse: Callable[[str], T]
    expected: str
    metavar: str = "TEXT"  # how a flag's help names it
    secret: bool = False  # an error never repeats the text: a key with one typo is still most of the key

    def read(self, where: str, text: str) -> T:
        try:
            return self.parse(text)
        except ValueError:
            shown = f"{where} (not shown)" if self.secret else f"{where}={text!r}"
            raise SettingError(f"{shown} is not valid: expected {self.expected}") from None


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


def _raise() -> str:
    raise ValueError


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
    return Form(
        lambda text: form.parse(text) if text.strip() else None, f"{form.expected}, or nothing", form.metavar,
        form.secret,
    )  # fmt: skip


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        scheme, sep, rest = text.strip().partition("://")
        if not sep or scheme.lower() not in schemes or not rest:
            raise ValueError(text)
        return text.strip()

    return parse


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}@{place}"


def parse_rate_limit(text: str) -> tuple[float, int]:
    """`<events per second>[:<burst>]`; the burst defaults to one second's worth (at least 1)."""
    rate, _, burst = text.strip().partition(":")
    per_second = float(rate)
    size = int(burst) if burst else max(1, math.ceil(per_second)) if math.isfinite(per_second) else 0
    if not (0 < per_second <= 1e6) or not (1 <= size <= 10**7):
        raise ValueError(text)
    return per_second, size


TEXT = Form(_text, "a non-empty value")
STORE_URL = Form(
    _url(("postgresql", "postgres")), "a PostgreSQL URL, e.g. postgresql://headwater@localhost/headwater", "URL"
)
BUS_URL = Form(_url(("redis", "rediss", "unix")), "a Redis URL, e.g. redis://localhost:6379/0", "URL")
PATH = Form(_path, "a directory (new or existing), e.g. ./headwater-data", "DIRECTORY")
PORT = Form(lambda text: _whole(text, 1, 65535), "a port number from 1 to 65535, e.g. 8000", "PORT")
SECONDS = Form(_seconds, "a number of seconds (0 or more), e.g. 0.5", "SECONDS")
POSITIVE_SECONDS = Form(_positive_seconds, "a number of seconds (more than 0), e.g. 10", "SECONDS")
SCHEDULE = Form(parse_schedule, "comma-separated seconds, e.g. 0,5,300", "SECONDS,...")
SWITCH = Form(_switch, "1 or 0 (or true/false, yes/no, on/off)", "[1|0]")
RATE_LIMIT = Form(
    parse_rate_limit, "events per second, and a burst after a colon: e.g. 100:200 (up to 1e6/s, 1e7)", "RATE[:BURST]"
)
SECRET_KEY = Form(
    parse_secret_key,
    "32 bytes in base64, e.g. the output of `openssl rand -base64 32`",
    "BASE64",
    secret=True,
)
# A bearer token for /metrics: long enough that it cannot be guessed, never repeated in an error.
METRICS_TOKEN = Form(
    lambda text: text if len(text) >= 16 and text.isprintable() and " " not in text else _raise(),
    "at least 16 printable characters with no spaces, e.g. the output of `openssl rand -hex 16`",
    secret=True,
)
LOG_LEVEL = choice("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMAT = choice("text", "json")


class _FromEnvironment:
    def __repr__(self) -> str:
        return "<from the environment>"


_FROM_ENVIRONMENT: Any = _FromEnvironment()


def setting(default: T, form: Form[T]) -> T:
    """A `Settings` field: `default`, unless `HEADWATER_<FIELD NAME>` holds text of `form`."""
    # A secret's field is left out of the settings' repr, so that a log of them never shows it.
    declared: T = field(default=_FROM_ENVIRONMENT, repr=not form.secret, metadata={"default": default, "form": form})
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
    # None: embedded SQLite in `data_dir`. A PostgreSQL URL: the log and every table there.
    store: str | None = setting(None, optional(STORE_URL))
    store_pool_size: int = setting(10, whole("connections", 10))
    # None: workers and waiters look at the store. A Redis URL: events are carried to workers and
    # waiters woken through Redis Streams (the store stays the source of truth).
    bus: str | None = setting(None, optional(BUS_URL))
    max_body_bytes: int = setting(5 * 1024 * 1024, whole("bytes", 5242880))
    # The bytes of a compressed body as sent (max_body_bytes counts them inflated). None: max_body_bytes.
    max_compressed_body_bytes: int | None = setting(None, optional(whole("bytes", 1048576)))
    max_batch_events: int = setting(1000, whole("events", 1000))
    max_json_depth: int = setting(64, whole("levels", 64))
    queue_max_events: int = setting(200_000, whole("events", 200000))
    key_cache_seconds: float = setting(0.5, SECONDS)
    # Each key's limit unless it or its tenant has one (headwater.ratelimit); None: no limit.
    rate_limit: tuple[float, int] | None = setting(None, optional(RATE_LIMIT))
    sync_timeout: float = setting(10.0, POSITIVE_SECONDS)
    catalog_interval: float = setting(1.0, POSITIVE_SECONDS)
    # None: the Segment dialect's own default (headwater.dialects.segment.SKEW_THRESHOLD_SECONDS).
    segment_skew_seconds: float | None = setting(None, optional(SECONDS))

    # The HTTP connection (headwater.http_protocol; `serve` has a flag for each).
    header_timeout: float = setting(10.0, POSITIVE_SECONDS)
    body_timeout: float = setting(10.0, POSITIVE_SECONDS)
    keep_alive_timeout: float = setting(5.0, POSITIVE_SECONDS)
    log_format: str = setting("text", LOG_FORMAT)

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
    # None: webhook secrets are stored in clear (the server warns at start). Set: sealed with it (headwater.sealing).
    secret_key: SecretKey | None = setting(None, optional(SECRET_KEY))
    # None: /metrics is open to whoever reaches the port. Set: it needs `Authorization: Bearer <token>`.
    metrics_token: str | None = setting(None, optional(METRICS_TOKEN))

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

    def where(self) -> str:
        """Where the data lives, for people: the password of a URL left out."""
        if self.store is None:
            return f"data in {self.data_dir}"
        bus = "" if self.bus is None else f", bus {_without_password(self.bus)}"
        return f"store {_without_password(self.store)}{bus}"

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
