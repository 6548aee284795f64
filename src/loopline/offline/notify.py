"""Run notifications: a clear summary of a failed or skipped run, logged and optionally POSTed.

Unattended runs at 2 a.m. are read in the morning: the summary says which project, which
run, what state and why, and where to look. A webhook that cannot be reached is logged, never
raised: a notification must not fail the run it reports on.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("loopline.notify")


def run_summary(
    run_name: str, state_name: str, message: str | None, project: str, tracking_uri: str
) -> dict[str, Any]:
    text = f"Loopline run {run_name} on {project}: {state_name}"
    if message:
        text += f": {message}"
    return {
        "text": text,  # the field Slack / Teams / Mattermost incoming webhooks display
        "run": run_name,
        "state": state_name,
        "message": message,
        "project": project,
        "tracking_uri": tracking_uri,
    }


def notify(summary: dict[str, Any], webhook_url: str | None, timeout_s: float = 10.0) -> bool:
    """Log the summary; POST it to `webhook_url` when set. True when it was delivered."""
    log.warning("%s", summary["text"])
    if not webhook_url:
        return False
    import httpx

    try:
        response = httpx.post(webhook_url, json=summary, timeout=timeout_s)
        response.raise_for_status()
        return True
    except httpx.HTTPError as error:
        log.error("run notification to the webhook failed: %s", error)
        return False
