"""`GET /metrics`: Prometheus's text format (headwater.metrics), plus consumer lag read from the
store at each scrape, so that it is right wherever the workers run."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.errors import ApiError
from headwater.metrics import exposition
from headwater.processing.status import Status, status
from headwater.services import Services

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LagCollector:
    """One scrape's consumer lag and checkpoints, as gauges by consumer and partition."""

    def __init__(self, found: Status) -> None:
        self.found = found

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        lag = GaugeMetricFamily(
            "headwater_consumer_lag_events", "Events of a partition after a consumer's checkpoint",
            labels=["consumer", "partition"],
        )  # fmt: skip
        head = GaugeMetricFamily("headwater_log_head", "The log's last offset")
        head.add_metric([], self.found.head)
        for c in self.found.consumers:
            lag.add_metric([c.name, "all" if c.partition is None else str(c.partition)], c.lag)
        yield head
        yield lag


def routes(services: Services) -> list[BaseRoute]:
    token = services.settings.metrics_token
    expected = f"Bearer {token}".encode() if token else None

    async def scrape(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ApiError(401, "/metrics needs Authorization: Bearer <HEADWATER_METRICS_TOKEN>")
        found = await status(services.store)
        return Response(exposition(LagCollector(found)), media_type=CONTENT_TYPE)

    return [Route("/metrics", scrape, methods=["GET"])]
