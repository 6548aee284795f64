"""Acceptance: the guide's worked example (docs/own-task.md), a task outside the families.

`examples/baskets` is a project with its own task module (order fraud from the set of items
in each order, several rows per example, a DeepSets network of its own), written against
`loopline.contract` only. Here it keeps the contract (the kit), and a copy of it runs
through the real console script as a team would use it: `loopline run` publishes a
champion, `loopline serve` answers `/predict` and `/stream` through the task's own adapter,
and `loopline monitor` runs a pass over what the service logged. One run serves every test.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from loopline.contract import check_task
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "baskets"
FAST = [
    "-P", "tune.n_trials=2", "-P", "tune.max_epochs=4", "-P", "train.max_epochs=25",
    "-P", "train.patience=5", "-P", "train.threads=1",
]  # fmt: skip
SERVED_ORDERS = 60  # sent to the service in two bursts
# Periods of 2 s (the bursts are 2.5 s apart), tested from 10 predictions on.
MONITOR = ["-P", "monitor.period=2s", "-P", "monitor.min_rows=10"]


def sh(*args: str, cwd: Path, env: dict, ok: tuple[int, ...] = (0,)):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in ok, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def sample_orders() -> pd.DataFrame:
    return pd.read_csv(EXAMPLE / "sample" / "orders.csv", dtype={"order_id": str})


def as_requests(rows: pd.DataFrame) -> list[dict]:
    """Orders as a client sends them: an id and its items."""
    return [
        {"order_id": order, "items": items[["price", "quantity", "category"]].to_dict("records")}
        for order, items in rows.groupby("order_id", sort=True)
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A copy of the example run once and served; the service has answered
    `SERVED_ORDERS` orders (its prediction log holds them)."""
    from loopline.health import free_port
    from tests.serving.conftest import serve_process

    home = tmp_path_factory.mktemp("own-task")
    root = home / "baskets"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".loopline", "data", "__py*"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "LOOPLINE_", "DVC_"))
    }
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    done = sh(str(BIN / "loopline"), "run", *FAST, cwd=root, env=env)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "loopline"), "serve", "--port", str(port)]
    with serve_process(command, root, root / ".loopline" / "serve.log", url, env):
        orders = as_requests(sample_orders())[:SERVED_ORDERS]
        half = SERVED_ORDERS // 2
        answers = post_orders(url, orders[:half])
        # A later burst completes the first one's monitoring period (MONITOR).
        time.sleep(2.5)
        answers += post_orders(url, orders[half:])
        yield {"root": root, "env": env, "url": url, "summary": summary,
               "orders": orders, "answers": answers}  # fmt: skip


def post_orders(url: str, orders: list[dict]) -> list[dict]:
    answered = httpx.post(f"{url}/predict", json={"orders": orders}, timeout=60)
    assert answered.status_code == 200, answered.text
    return answered.json()


def test_the_kit_passes_on_the_example():
    report = check_task(
        "tasks.baskets:BasketsTask", sample_orders(), params=EXAMPLE / "params.yaml"
    )
    assert report.status("serving") == "passed", report
    assert "answers" in next(c.detail for c in report.checks if c.part == "serving")


def test_loopline_run_publishes_the_set_model(served):
    summary = served["summary"]
    assert summary["status"] == "published" and summary["task"] == "baskets", summary
    assert summary["promoted"] is True, summary
    metrics = summary["metrics"]
    # The set of items tells fraud better than the class shares or the order's total.
    assert metrics["test_accuracy"] > metrics["majority_class_baseline_accuracy"], metrics
    assert metrics["test_accuracy"] > metrics["order_total_baseline_accuracy"], metrics


def test_the_service_answers_orders_through_the_tasks_adapter(served):
    url, orders, answers = served["url"], served["orders"], served["answers"]
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["model"]["task"] == "baskets", meta
    assert meta["model"]["items_at_most"] == 50, meta
    assert [a["order_id"] for a in answers] == [o["order_id"] for o in orders], answers[:3]
    assert all(a["label"] in ("ok", "fraud") for a in answers), answers[:3]
    assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-4 for a in answers)
    truth = sample_orders().groupby("order_id")["label"].first()
    right = sum(a["label"] == truth[a["order_id"]] for a in answers)
    assert right / len(answers) > 0.8, f"{right} of {len(answers)} orders labelled right"

    # The items' order does not matter: the network pools them.
    first = orders[0]
    turned = {**first, "items": first["items"][::-1]}
    again = httpx.post(f"{url}/predict", json={"orders": [turned]}, timeout=30).json()[0]
    assert again["probabilities"]["fraud"] == pytest.approx(
        answers[0]["probabilities"]["fraud"], abs=1e-5
    )


def test_the_service_refuses_what_the_contract_refuses(served):
    url = served["url"]
    item = {"price": 10.0, "quantity": 1.0, "category": "grocery"}
    odd = {"order_id": "odd", "items": [item, {**item, "category": "weapons"}]}
    fine = {"order_id": "fine", "items": [item]}
    answers = httpx.post(f"{url}/predict", json={"orders": [odd, fine]}, timeout=30).json()
    assert "known_category" in answers[0]["error"] and "items[1]" in answers[0]["error"]
    assert answers[1]["label"] in ("ok", "fraud"), answers
    too_big = {"order_id": "big", "items": [item] * 51}
    refused = httpx.post(f"{url}/predict", json={"orders": [too_big]}, timeout=30)
    assert refused.status_code == 400 and "at most 50 items" in refused.text, refused.text


def test_the_stream_takes_one_order_per_line(served):
    url, orders, answers = served["url"], served["orders"][:3], served["answers"][:3]
    lines = "".join(json.dumps(order) + "\n" for order in orders)
    streamed = httpx.post(
        f"{url}/stream", content=lines, headers={"content-type": "application/x-ndjson"}
    )
    replies = [json.loads(line) for line in streamed.text.splitlines()]
    assert [r["line"] for r in replies] == [1, 2, 3], replies
    assert [r["label"] for r in replies] == [a["label"] for a in answers]


def test_loopline_monitor_runs_a_pass_on_the_logged_orders(served):
    root, env = served["root"], served["env"]
    # Exit code 3: a signal alarmed (possible on one small period); the pass ran either way.
    done = sh(str(BIN / "loopline"), "monitor", *MONITOR, cwd=root, env=env, ok=(0, 3))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "baskets" and result["predictions"] >= SERVED_ORDERS, result
    assert result["periods"] > 0, result
    # The task's own monitored columns: per order (`monitor_inputs`) and its output.
    with sqlite3.connect(root / ".loopline" / "predictions.db") as db:
        tested = set(
            db.execute(
                "select signal, feature from monitoring where model_name = 'baskets' "
                "and statistic is not null"
            )
        )
    for column in ("items", "order_total", "resold_share"):
        assert ("feature_drift", column) in tested, tested
    assert ("prediction_drift", "fraud_probability") in tested, tested
