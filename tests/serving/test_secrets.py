"""No password leaves the service: not in an answer, a log line, a banner or a traceback."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from loopline.health import free_port
from loopline.redaction import redact, remember_url_secrets
from tests.serving.conftest import raw_readings, serve_process

BIN = Path(sys.executable).parent
PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("registry http://u:s3cret-pw@127.0.0.1:1: refused", "http://u:***@127.0.0.1:1: refused"),
        ("(postgresql+psycopg://u:p@ss@db:5432/x)", "postgresql+psycopg://u:***@db:5432/x)"),
        ("'mysql://root:pw@localhost/db' and sqlite:////tmp/m.db", "mysql://root:***@localhost"),
        ("https://host:8443/path and mail a@b", "https://host:8443/path and mail a@b"),
        ("dsn host=db password=hunter22 user=u", "password=*** user=u"),
    ],
)
def test_redact_masks_passwords_in_any_text(text, shown):
    assert shown in redact(text)


def test_a_remembered_password_is_masked_outside_urls_too():
    remember_url_secrets("postgresql://u:pa%40ss-word@db/x")
    assert redact("auth failed for pa@ss-word and pa%40ss-word") == "auth failed for *** and ***"


def test_no_endpoint_or_log_line_shows_a_uri_password(served_project, tmp_path):
    """`loopline serve` with a password in the tracking URI (a registry that is down) and
    in the prediction log's URL (PostgreSQL, trust auth: any password connects): every
    answer and every line of its output is free of the password."""
    closed = free_port()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env |= {
        "MLFLOW_TRACKING_URI": f"http://u:{PASSWORD}@127.0.0.1:{closed}",
        "LOOPLINE_SERVE_PREDICTION_LOG": f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1/test",
        "LOOPLINE_TASK": "solar",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    command = [str(BIN / "loopline"), "serve", "--port", str(port), "--poll-interval", "0.5"]
    log_path = tmp_path / "serve.log"
    seen: list[str] = []
    with serve_process(command, served_project, log_path, url, env, wait_for="/livez"):
        time.sleep(1.5)  # a poll or two fail
        with httpx.Client(base_url=url, timeout=30) as client:
            for path in ("/livez", "/readyz", "/metadata", "/metrics", "/docs.json"):
                seen.append(f"{path}: {client.get(path).text}")
            readings = raw_readings("2021-02-01", 48)
            window = {"site_id": "greensboro", "readings": readings}
            for path, body in (("/predict", {"windows": [window]}), ("/explain", {})):
                seen.append(f"{path}: {client.post(path, json=body).text}")
            lines = "".join(json.dumps(r) + "\n" for r in readings)
            seen.append(f"/stream: {client.post('/stream', content=lines).text}")
        # (The same start shows the service's own Prometheus folder in use: one per port.)
        metrics = served_project / ".loopline" / "metrics" / f"solar-{port}"
        assert list(metrics.glob("*.db")), "the service's metrics are not in its own folder"
    seen.append(log_path.read_text())
    everything = "\n".join(seen)
    assert "not ready" in everything and "u:***@127.0.0.1" in everything  # it did say why
    assert PASSWORD not in everything
