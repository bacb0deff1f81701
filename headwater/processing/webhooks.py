"""Webhook delivery: the worker that drains the outbox, signing, retries and the SSRF guard.

The worker claims due deliveries, sends them concurrently (at most `webhook_concurrency`
at a time) and records every attempt. Each request is signed per Standard Webhooks with
the `standardwebhooks` library: `webhook-id` is the delivery id (the same on every retry),
`webhook-timestamp` is the time of the attempt, `webhook-signature` carries a `v1`
HMAC-SHA256 signature per live secret: the current one first, then every rotated-out secret
still in its grace period, newest first. Secrets sealed at rest (headwater.sealing) are
opened when their deliveries are claimed, and live in clear only in memory.

Only a 2xx within the timeout is a success; redirects are never followed. 410 Gone
disables the endpoint. Anything else is retried after `schedule[n]` seconds (± 10%
jitter) — or after `Retry-After` on 429 and 503, up to `webhook_max_retry_after` —
until the schedule is used up; then the delivery is dead-lettered (status `failed`).

The SSRF guard sits in the connection layer: every host name is resolved when a
connection is opened, each resolved address is checked, and the connection goes to the
very address that was checked, so DNS cannot point a registered name somewhere private
later (or between check and connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import certifi
import httpcore
import msgspec
from standardwebhooks import Webhook

from headwater.clock import Clock, system_now
from headwater.config import Settings
from headwater.metrics import metrics
from headwater.sealing import Sealer, SealError
from headwater.storage.base import Store, StoreError
from headwater.storage.records import AttemptOutcome, ClaimedDelivery, DeliveryAttempt
from headwater.storage.registry import PreviousSecret, WebhookEndpoint

logger = logging.getLogger("headwater.webhooks")

MAX_URL_LENGTH = 2048
MAX_RESPONSE_BYTES = 64 * 1024
JITTER = 0.1
LEASE_MARGIN = 60.0  # a claim outlives the longest send by this much
USER_AGENT = b"Headwater-Webhooks/1"
ERROR_LENGTH = 500
GONE = "the endpoint answered 410 Gone"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud instance-metadata and platform endpoints. Most are link-local or private anyway;
# some (Azure's wireserver) are public addresses and need naming.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wireserver
        "192.0.0.192",  # Oracle Cloud
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class DeliveryRefused(httpcore.ConnectError):
    """The SSRF guard refused to connect."""


class DueDelivery(msgspec.Struct, frozen=True):
    """A claimed delivery with what the worker needs to send it: its endpoint's url and secrets."""

    id: str
    tenant: str
    mode: str
    endpoint_id: str
    topic: str
    payload: bytes
    attempts: int  # attempts made so far, in all
    round_attempts: int  # attempts made since it was (re-)queued: the index into the retry schedule
    url: str
    secret: str  # this and the previous ones in clear
    previous_secrets: list[PreviousSecret]
    partition: int


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64, 6to4 or Teredo address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the guard refuses `address` (e.g. "loopback"), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = forbidden_reason(inner)
            if reason is not None:
                return reason
    checks: tuple[tuple[bool, str], ...] = (
        (address in METADATA_ADDRESSES, "cloud metadata"),
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv6Address) and address in UNIQUE_LOCAL, "unique-local"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "non-public"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _a(reason: str) -> str:
    return ("an " if reason[0] in "aeiou" else "a ") + reason


# A DNS name as `urlsplit` gives it (lower-cased): labels of up to 63 characters, an optional final dot.
_HOST_NAME = re.compile(r"([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?")


# What inet_aton reads: up to four parts, each decimal, octal (0...) or hex (0x...).
_IPV4_NUMBER = re.compile(r"[0-9a-fA-FxX.]+")


def literal_address(host: str) -> IPAddress | None:
    """The address `host` is, when it is a number rather than a name, in every spelling a resolver
    takes for one: IPv6 (bracketed or not, with a zone id) and IPv4 as `inet_aton` reads it,
    decimal (`2130706433`), hex (`0x7f000001`), octal (`0177.0.0.1`) or short (`127.1`, `0`), with
    or without a final dot. Registration and the connect-time guard both ask this."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    number = host.removesuffix(".")
    # The pattern first: inet_aton itself ignores whatever follows a space.
    if not _IPV4_NUMBER.fullmatch(number):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(number))
    except OSError:
        return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves names itself, refuses private
    addresses (unless allowed), and connects to the address it checked."""

    def __init__(
        self,
        allow_private: bool = False,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.allow_private = allow_private
        self.inner = inner or httpcore.AnyIOBackend()
        self.resolve = resolve

    async def addresses(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(timeout):
                resolved = await self.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = [a for a in map(literal_address, resolved) if a is not None]
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.addresses(host, port, timeout)
        if not self.allow_private:
            for address in addresses:
                reason = forbidden_reason(address)
                if reason is not None:
                    if literal_address(host) is None:
                        shown = f"{host} resolves to {address}, which"
                    else:
                        shown = f"{host} ({address})" if address.version == 4 and str(address) != host else host
                    raise DeliveryRefused(f"refused by the SSRF guard: {shown} is {_a(reason)} address")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DeliveryRefused("refused: webhooks are never sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def check_url(url: str, allow_private: bool = False) -> str | None:
    """Why `url` cannot be a webhook endpoint, or None when it can (as far as can be told
    without resolving it: names are checked again at every connection)."""
    if len(url) > MAX_URL_LENGTH:
        return f"url is longer than {MAX_URL_LENGTH} characters"
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "url must be ASCII (punycode for international names) without whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"url is not valid: {exc}"
    if parts.scheme not in ("http", "https"):
        return "url must start with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return "url must not contain credentials"
    host = parts.hostname
    if not host:
        return "url has no host"
    if literal_address(host) is None and (len(host) > 254 or not _HOST_NAME.fullmatch(host)):
        return "url's host is neither a host name (letters, digits, '-', '_' in dot-separated labels) nor an IP address"
    if port == 0:
        return "url has an invalid port"
    if not allow_private:
        literal = literal_address(host)
        reason = forbidden_reason(literal) if literal is not None else None
        if literal is not None and reason is not None:
            # A number spelled unusually (0x7f000001) is named as the address it is.
            spelled = f" ({host} is {literal})" if literal.version == 4 and str(literal) != host else ""
            return f"url points to {_a(reason)} address{spelled}"
        if host.rstrip(".") in LOCAL_NAMES or host.rstrip(".").endswith(".localhost"):
            return "url points to this machine"
    return None


def _due(c: ClaimedDelivery, endpoint: WebhookEndpoint, sealer: Sealer) -> DueDelivery:
    """The delivery with its endpoint's secrets opened (a `SealError` when they cannot be)."""
    secret = sealer.open(endpoint.id, endpoint.secret)
    previous = [PreviousSecret(sealer.open(endpoint.id, p.secret), p.expires_at) for p in endpoint.previous_secrets]
    return DueDelivery(
        c.id, c.tenant, c.mode, c.endpoint_id, c.topic, c.payload, c.attempts, c.round_attempts, endpoint.url, secret,
        previous, c.partition,
    )  # fmt: skip


def signature_headers(delivery: DueDelivery, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt of `delivery` made at `at`."""
    at = at.astimezone(UTC)
    body = delivery.payload.decode()
    live = [delivery.secret, *(p.secret for p in delivery.previous_secrets if at < p.expires_at)]
    signatures = [Webhook(secret).sign(delivery.id, at, body) for secret in live]
    return {
        "webhook-id": delivery.id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


class Response(NamedTuple):
    status: int | None
    retry_after: str | None
    error: str | None


def _truncate(text: str) -> str:
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, DeliveryRefused):
        return text
    if isinstance(exc, httpcore.TimeoutException):
        return f"timed out: {text}"
    return f"{type(exc).__name__}: {text}"


class DeliveryWorker:
    """Drains the webhook outbox. `run()` is the background loop; `run_once()` sends what is
    due now and waits for it (tests move `clock` and call it instead of sleeping).
    `partitions`, when given, says whose outbox to claim from: a worker's own partitions, so
    that it writes only the partition files it holds."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock = system_now,
        *,
        jitter: float = JITTER,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        resolve: Resolver = system_resolve,
        rng: random.Random | None = None,
        partitions: Callable[[], list[int]] | None = None,
    ) -> None:
        self.store = store
        self.partitions = partitions
        self.clock = clock
        self.schedule = settings.webhook_retry_schedule
        self.timeout = settings.webhook_timeout
        self.max_retry_after = settings.webhook_max_retry_after
        self.concurrency = max(1, settings.webhook_concurrency)
        self.poll_interval = settings.webhook_poll_interval
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.backend = GuardedBackend(settings.allow_private_webhooks, network_backend, resolve)
        self.sealer = Sealer(settings.secret_key)
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=self.concurrency,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self.backend,
        )
        self._inflight: set[asyncio.Task[None]] = set()
        # Endpoints that answered 410 since their deliveries were claimed: the rest of what
        # was claimed for them has already failed in the store, and is not sent.
        self._gone: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # Lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="headwater-webhooks")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, give sends in flight `grace` seconds, then cancel the rest
        (their deliveries stay pending and are sent again once their claim expires)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.pool.aclose()

    async def run(self) -> None:
        while True:
            free = self.concurrency - len(self._inflight)
            claimed = 0
            if free > 0:
                try:
                    for delivery in await self._claim(free):
                        self._spawn(delivery)
                        claimed += 1
                except StoreError as exc:  # the store being down is one line, not a traceback a try
                    logger.warning("claiming webhook deliveries failed (%s); retrying", exc)
                except Exception:  # the loop must outlive a failed claim
                    logger.exception("claiming webhook deliveries failed; retrying")
            if free > 0 and claimed < free:
                await asyncio.sleep(self.poll_interval)
            elif self._inflight:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    async def run_once(self, limit: int | None = None) -> int:
        """Send every delivery due now (up to `limit`), wait for them; returns how many."""
        due = await self._claim(limit or self.concurrency * 4)
        semaphore = asyncio.Semaphore(self.concurrency)

        async def bounded(delivery: DueDelivery) -> None:
            async with semaphore:
                await self.deliver(delivery)

        await asyncio.gather(*(bounded(d) for d in due))
        return len(due)

    def _spawn(self, delivery: DueDelivery) -> None:
        task = asyncio.create_task(self.deliver(delivery))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _claim(self, limit: int) -> list[DueDelivery]:
        now = self.clock()
        lease = now + timedelta(seconds=self.timeout + LEASE_MARGIN)
        partitions = None if self.partitions is None else self.partitions()
        claimed = await self.store.derived.claim_deliveries(now, limit, lease, self.schedule[0], partitions)
        if not claimed:
            return []
        endpoints = await self.store.registry.webhooks_by_id({c.endpoint_id for c in claimed})
        due = []
        for c in claimed:
            endpoint = endpoints.get(c.endpoint_id)
            if endpoint is None:  # deleted since: so are its deliveries
                await self.store.derived.forget_endpoint(c.endpoint_id)
            elif not endpoint.enabled:  # disabled since: its pending deliveries fail
                await self.store.derived.fail_pending(c.endpoint_id, endpoint.disabled_reason or "disabled")
            else:
                try:
                    due.append(_due(c, endpoint, self.sealer))
                except SealError as exc:  # never sent unsigned: pending again once the claim expires
                    logger.error("webhook delivery %s is not sent: %s", c.id, exc)
        self._gone.difference_update(d.endpoint_id for d in due)  # claimed again: enabled again
        return due

    # One attempt

    async def deliver(self, delivery: DueDelivery) -> None:
        if delivery.endpoint_id in self._gone:
            return
        at = self.clock()
        started = time.perf_counter()
        try:
            response = await self.send(delivery, at)
        except Exception as exc:  # noqa: BLE001 - recorded as the attempt's error
            response = Response(None, None, _error_text(exc))
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        attempt = DeliveryAttempt(
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            attempt=delivery.attempts + 1,
            at=at,
            status_code=response.status,
            latency_ms=latency_ms,
            error=None if response.error is None else _truncate(response.error),
        )
        outcome = self.outcome(delivery, attempt, response)
        try:
            await self.store.derived.finish_attempt(outcome)
            metrics().webhook_attempts.labels(outcome.status).inc()
            if response.status == 410:
                # Gone: the endpoint is disabled and the rest of what is pending for it fails.
                self._gone.add(delivery.endpoint_id)
                if await self.store.registry.disable_webhook(delivery.endpoint_id, GONE, at):
                    await self.store.derived.fail_pending(delivery.endpoint_id, GONE)
        except Exception:  # the claim expires and the delivery is sent again
            logger.exception("recording webhook attempt %s of %s failed", attempt.attempt, delivery.id)

    async def send(self, delivery: DueDelivery, at: datetime) -> Response:
        parts = urlsplit(delivery.url)
        headers = [
            (b"Host", parts.netloc.encode("ascii")),
            (b"User-Agent", USER_AGENT),
            (b"Content-Type", b"application/json"),
            (b"Accept", b"*/*"),
            *((k.encode(), v.encode()) for k, v in signature_headers(delivery, at).items()),
        ]
        timeouts = {"connect": self.timeout, "read": self.timeout, "write": self.timeout, "pool": self.timeout}
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.stream(
                    "POST", delivery.url, headers=headers, content=delivery.payload, extensions={"timeout": timeouts}
                ) as response:
                    read = 0
                    async for chunk in response.aiter_stream():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                    retry_after = next(
                        (v.decode("latin-1") for k, v in response.headers if k.lower() == b"retry-after"), None
                    )
                    return Response(response.status, retry_after, _status_error(response.status))
        except TimeoutError:
            return Response(None, None, f"timed out after {self.timeout:g}s")

    def outcome(self, delivery: DueDelivery, attempt: DeliveryAttempt, response: Response) -> AttemptOutcome:
        status = response.status
        if status is not None and 200 <= status < 300:
            return AttemptOutcome(attempt, "delivered", delivery.partition)
        if status == 410:
            return AttemptOutcome(attempt, "failed", delivery.partition)
        following = delivery.round_attempts + 1
        if following >= len(self.schedule):
            return AttemptOutcome(attempt, "failed", delivery.partition)
        now = self.clock()
        wait = self.schedule[following]
        wait = max(0.0, wait * (1 + self.rng.uniform(-self.jitter, self.jitter)))
        if status in (429, 503):
            asked = parse_retry_after(response.retry_after, now)
            if asked is not None:
                wait = min(asked, self.max_retry_after)
        return AttemptOutcome(attempt, "pending", delivery.partition, next_attempt_at=now + timedelta(seconds=wait))


def _status_error(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"
