"""Running services as the operator page sees them: the version each serves (`/metadata`),
ready or not and why (`/readyz`), and from its Prometheus `/metrics` between two looks:
requests per second, p50/p99 latency and errors.

Rates need two looks: a `Watcher` keeps each service's previous scrape, so the first look
shows totals and the next ones show what happened in between.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loopline.redaction import redact

# Probes and scrapes are not traffic: they would make an idle service look busy.
NOT_TRAFFIC = {"/metrics", "/livez", "/readyz", "/healthz", "/metadata", "/docs.json", "/docs"}
DURATION = "request_duration_seconds"


@dataclass
class Scrape:
    """One look at a service's request metrics: cumulative counts since it started."""

    at: float
    requests: float = 0.0
    errors: float = 0.0  # answers of 500 or above
    refused: float = 0.0  # answers of 400-499
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count


def parse_metrics(text: str, at: float) -> Scrape:
    """The traffic totals in a Prometheus exposition (BentoML's request histogram, over
    every endpoint that is not a probe)."""
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        if not family.name.endswith(DURATION):
            continue
        for sample in family.samples:
            if sample.labels.get("endpoint") in NOT_TRAFFIC:
                continue
            code = str(sample.labels.get("http_response_code", ""))
            if sample.name.endswith("_count"):
                scrape.requests += sample.value
                if code.startswith("5"):
                    scrape.errors += sample.value
                elif code.startswith("4"):
                    scrape.refused += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                scrape.buckets[le] = scrape.buckets.get(le, 0.0) + sample.value
    return scrape


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket as
    Prometheus's `histogram_quantile` does; None without observations."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    lower, below = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower  # the highest finite bound: nothing better is known
            inside = count - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = edge, count
    return lower


def traffic(now: Scrape, before: Scrape | None) -> dict[str, Any]:
    """Requests per second, errors and latency quantiles between two scrapes (since the
    service started when there is no earlier one)."""
    if before is None or now.requests < before.requests:  # first look, or it restarted
        before = Scrape(now.at, buckets={le: 0.0 for le in now.buckets})
        interval = None
    else:
        interval = now.at - before.at
    buckets = {le: now.buckets[le] - before.buckets.get(le, 0.0) for le in now.buckets}
    requests = now.requests - before.requests
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    return {
        "interval_s": interval,
        "requests": requests,
        "rps": requests / interval if interval else None,
        "errors": now.errors - before.errors,
        "refused": now.refused - before.refused,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


class Watcher:
    """Looks at services, remembering each one's last scrape (for rates)."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.last: dict[str, Scrape] = {}

    async def look_all(self, urls: list[str]) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            return list(await asyncio.gather(*(self.look(client, url) for url in urls)))

    async def look(self, client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        """One service: what it serves, whether it is ready (and why not), its traffic; a
        service that does not answer says so."""
        base = url.rstrip("/")
        out: dict[str, Any] = {"url": base, "answering": False}
        try:
            metadata, ready, metrics = await asyncio.gather(
                client.get(f"{base}/metadata"),
                client.get(f"{base}/readyz"),
                client.get(f"{base}/metrics"),
            )
        except httpx.TimeoutException:
            out["error"] = f"did not answer within {self.timeout_s:g} s"
            return out
        except httpx.HTTPError as error:
            out["error"] = f"did not answer: {redact(error) or type(error).__name__}"
            return out
        out["answering"] = True
        out["ready"] = ready.status_code == 200
        out["readiness"] = _detail(ready)
        if metadata.status_code == 200:
            status = metadata.json()
            model = status.get("model") or {}
            out["version"] = model.get("version")
            out["model"] = (status.get("watching") or {}).get("name")
            out["fallback"] = status.get("fallback")
            out["last_poll_error"] = status.get("last_poll_error")
        if metrics.status_code == 200:
            scrape = parse_metrics(metrics.text, time.monotonic())
            out["traffic"] = traffic(scrape, self.last.get(base))
            self.last[base] = scrape
        return out


def _detail(response: httpx.Response) -> str:
    """What `/readyz` said: its `detail` (why not ready, or serving a fallback) or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:300]
