"""`headwater status --url`: a running server's /metrics, summed up in a few lines."""

from __future__ import annotations

from collections import defaultdict

import httpx


class ScrapeError(Exception):
    pass


def scrape(url: str, token: str | None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each sample of the server's /metrics, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + "/metrics", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise ScrapeError(f"{url}/metrics answered {response.status_code}: {response.text.strip()[:200]}")
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _by(samples: list[tuple[dict[str, str], float]], *keys: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples:
        totals["/".join(labels.get(k, "") for k in keys)] += value
    return dict(totals)


def _listed(totals: dict[str, float]) -> str:
    shown = [f"{name} {value:,.0f}" for name, value in sorted(totals.items()) if value]
    return ", ".join(shown) or "none"


def lines(found: dict[str, list[tuple[dict[str, str], float]]]) -> list[str]:
    """Counters are since each process started (the server's processes added up)."""
    accepted = _by(found["headwater_events_accepted_total"], "tenant", "mode")
    duplicates = _by(found["headwater_events_duplicate_total"], "tenant", "mode")
    rejected = _by(found["headwater_events_rejected_total"], "tenant", "mode")
    reasons = _by(found["headwater_events_rejected_total"], "reason")
    out = []
    for scope in sorted(set(accepted) | set(duplicates) | set(rejected)):
        out.append(
            f"ingest {scope}: {accepted.get(scope, 0):,.0f} accepted, {duplicates.get(scope, 0):,.0f} duplicates,"
            f" {rejected.get(scope, 0):,.0f} rejected"
        )
    if not out:
        out.append("ingest: nothing yet")
    out.append(f"rejected by reason: {_listed(reasons)}")
    queue = sum(v for _, v in found["headwater_write_queue_events"])
    groups = sum(v for _, v in found["headwater_group_commit_events_count"])
    grouped = sum(v for _, v in found["headwater_group_commit_events_sum"])
    seconds = sum(v for _, v in found["headwater_group_commit_seconds_sum"])
    average = f", {grouped / groups:,.1f} events and {seconds / groups * 1000:,.2f} ms each" if groups else ""
    out.append(f"write queue: {queue:,.0f} events; group commits: {groups:,.0f}{average}")
    out.append(f"rate-limit refusals: {_listed(_by(found['headwater_rate_limit_refusals_total'], 'tenant'))}")
    out.append(f"trigger firings: {_listed(_by(found['headwater_trigger_firings_total'], 'tenant', 'mode'))}")
    out.append(f"webhook attempts: {_listed(_by(found['headwater_webhook_attempts_total'], 'outcome'))}")
    out.append(f"dead letters: {_listed(_by(found['headwater_dead_letters_total'], 'consumer'))}")
    lag = sum(v for _, v in found["headwater_consumer_lag_events"])
    out.append(f"consumer lag: {lag:,.0f} events in all")
    return out
