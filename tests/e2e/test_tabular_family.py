"""Acceptance: the tabular family on a user's own tables, no code.

`loopline init --template tabular` twice, as a user runs it: `churn` (a classification,
the template's own customers, run as `loopline run -P ingest.source=customers.csv`) and
`prices` (a regression on a house table written here, with one price that is text). Both
run the real offline flow (the tuning grid's three trials are the MLP, the trees and the
linear model; on these small tables the gate cross-validates against the feature-blind
baseline), publish, and serve through the real service
(`loopline serve`), whose answers equal the champion's ONNX outputs offline on the same
rows. The two projects run side by side: each flow spends most of its time starting up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
# Three trials on a grid of one point per knob but the algorithm: MLP, trees, linear.
SPACE = (
    "tune.search_space={algorithm: {choices: [mlp, gbm, linear]}, hidden_size: {choices: [32]}, "
    "layers: {choices: [1]}, dropout: {choices: [0.0]}, learning_rate: {choices: [0.01]}, "
    "batch_size: {choices: [32]}, trees: {choices: [100]}, depth: {choices: [3]}, "
    "shrinkage: {choices: [0.1]}, inverse_regularization: {choices: [1.0]}}"
)
FAST = [
    "-P", "tune.sampler=grid", "-P", "tune.n_trials=3", "-P", SPACE,
    "-P", "tune.max_epochs=5", "-P", "train.max_epochs=30", "-P", "train.threads=1",
]  # fmt: skip
PRICES = {
    "target": "price",
    "id_column": "house_id",
    "numeric": ["area_m2", "rooms", "age_years"],
    "categorical": ["district"],
    "kind": "regression",
    "labels": None,
}
DISTRICT_RATE = {"centre": 5.0, "harbour": 4.0, "hills": 3.2, "suburb": 2.2}  # k per m²


def houses(n: int = 300, seed: int = 3) -> pd.DataFrame:
    """House prices (thousands) that multiply area by the district's rate: not a line."""
    rng = np.random.default_rng(seed)
    district = rng.choice(list(DISTRICT_RATE), n)
    area = rng.uniform(40, 200, n).round(1)
    rooms = rng.integers(1, 7, n)
    age = rng.uniform(0, 80, n).round(0)
    rate = np.array([DISTRICT_RATE[d] for d in district])
    price = area * rate * (1 - 0.004 * age) + 15 * rooms + rng.normal(0, 5, n)
    frame = pd.DataFrame(
        {
            "house_id": [f"h-{i:04d}" for i in range(n)],
            "area_m2": area,
            "rooms": rooms,
            "age_years": age,
            "district": district,
            "price": price.round(1).astype(object),
        }
    )
    frame.loc[7, "price"] = "call us"  # a regression target with text: quarantined, named
    return frame


def sh(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def run_both(runs: dict[str, tuple[Path, list[str]]], env: dict) -> dict[str, str]:
    """`loopline run` in each project at once; each one's output."""
    started = {
        name: subprocess.Popen(
            [str(BIN / "loopline"), "run", *FAST, *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (root, args) in runs.items()
    }
    outputs = {name: process.communicate(timeout=600)[0] for name, process in started.items()}
    for name, process in started.items():
        assert process.returncode == 0, f"{name}: loopline run failed:\n{outputs[name][-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Both projects made, run and served; yields what the tests read."""
    from loopline.health import free_port
    from tests.serving.conftest import serve_process

    home = tmp_path_factory.mktemp("tabular-e2e")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "LOOPLINE_", "DVC_"))
    }
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    for name in ("churn", "prices"):
        sh(str(BIN / "loopline"), "init", name, "--template", "tabular", cwd=home, env=env)
    churn, prices = home / "churn", home / "prices"
    # The user's own file beside params.yaml (here: the template's sample, copied).
    shutil.copy(churn / "sample" / "customers.csv", churn / "customers.csv")
    houses().to_csv(prices / "houses.csv", index=False)
    params = yaml.safe_load((prices / "params.yaml").read_text())
    params["tabular"] = PRICES
    (prices / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outputs = run_both(
        {
            "churn": (churn, ["-P", "ingest.source=customers.csv"]),
            "prices": (prices, ["-P", "ingest.source=houses.csv"]),
        },
        env,
    )
    urls = {}
    with ExitStack() as stack:
        for name, root in (("churn", churn), ("prices", prices)):
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            command = [str(BIN / "loopline"), "serve", "--port", str(port)]
            log = root / ".loopline" / "serve.log"
            stack.enter_context(serve_process(command, root, log, urls[name], env))
        yield {"roots": {"churn": churn, "prices": prices}, "outputs": outputs, "urls": urls}


def summary(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def trial_algorithms(output: str) -> set[str]:
    return set(re.findall(r"trial \d+: complete.*?'algorithm': '(\w+)'", output, re.S))


@pytest.mark.parametrize("name", ["churn", "prices"])
def test_tuning_tries_every_algorithm_and_small_data_is_cross_validated(served, name):
    output = served["outputs"][name]
    assert trial_algorithms(output) == {"mlp", "gbm", "linear"}, output[-3000:]
    result = summary(output)
    assert result["status"] == "published" and result["promoted"] is True, result
    decision, metrics = result["decision"], result["metrics"]
    # Under 1,000 rows: ten folds, a corrected t-test against the feature-blind baseline.
    assert decision["rule"] == "cross-validation", decision
    (baseline,) = decision["baseline_tests"]
    test = decision["baseline_tests"][baseline]
    assert test["rows"] == 10 and test["p_value"] < test["alpha"], test
    if name == "churn":
        assert metrics["cv_model_accuracy"] > metrics["cv_majority_class_baseline_accuracy"]
    else:
        assert metrics["cv_model_rmse"] < metrics["cv_training_mean_baseline_rmse"], metrics


def test_a_regression_target_with_text_is_quarantined_naming_it(served):
    assert "299 good, 1 quarantined" in served["outputs"]["prices"]
    folder = served["roots"]["prices"] / "data" / "quarantine"
    quarantined = pd.concat(pd.read_csv(p) for p in folder.rglob("*.csv"))  # people open it
    assert quarantined["house_id"].tolist() == ["h-0007"]
    assert "type:price='call us' is not a float" in quarantined["_reasons"].iloc[0]


def offline_outputs(root: Path, name: str, rows: pd.DataFrame) -> np.ndarray:
    """The champion's ONNX outputs on raw rows, computed here from its own spec."""
    from loopline.onnx_runtime import run_onnx
    from loopline.paths import ProjectPaths
    from loopline.registry import load_champion
    from loopline.tasks.tabular import TabularTask

    uri = ProjectPaths.at(root).tracking_uri()
    session, spec, _version = load_champion(uri, name, root / ".loopline" / "offline-check")
    return run_onnx(session, TabularTask().inputs(rows, spec))


def test_the_service_answers_as_the_offline_onnx_model(served):
    import httpx

    customers = pd.read_csv(served["roots"]["churn"] / "customers.csv").head(12)
    items = json.loads(customers.drop(columns="churned").to_json(orient="records"))
    answers = httpx.post(f"{served['urls']['churn']}/predict", json={"items": items}, timeout=30)
    answers = answers.json()
    assert [a["id"] for a in answers] == customers["customer_id"].tolist()
    expected = offline_outputs(served["roots"]["churn"], "churn", customers)
    served_p = np.array([[a["probabilities"][k] for k in ("no", "yes")] for a in answers])
    np.testing.assert_allclose(served_p, expected, atol=1e-6)

    rows = houses().drop(index=7).head(12)
    items = json.loads(rows.drop(columns="price").to_json(orient="records"))
    answers = httpx.post(f"{served['urls']['prices']}/predict", json={"items": items}, timeout=30)
    values = np.array([[a["value"]] for a in answers.json()])
    expected = offline_outputs(served["roots"]["prices"], "prices", rows)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_the_service_checks_items_against_the_served_model(served):
    import httpx

    url = served["urls"]["churn"]
    row = {
        "customer_id": "new-1",
        "tenure_months": 5,
        "monthly_spend": 82.5,
        "support_calls": 1,
        "plan": "platinum",  # a category never seen in training: answered, named
        "region": "east",
    }
    answer = httpx.post(f"{url}/predict", json={"items": [row]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["unseen"] == ["plan='platinum'"]
    assert answer.json()[0]["label"] in ("no", "yes")

    missing = {k: v for k, v in row.items() if k != "region"}
    refused = httpx.post(f"{url}/predict", json={"items": [missing]}, timeout=30)
    assert refused.status_code == 400 and "region" in refused.text, refused.text
    text = {**row, "monthly_spend": "a lot"}
    refused = httpx.post(f"{url}/predict", json={"items": [text]}, timeout=30)
    assert refused.status_code == 400, refused.text
    assert "monthly_spend" in refused.text and "a lot" in refused.text

    meta = httpx.get(f"{url}/metadata").json()["model"]
    assert meta["categorical"]["plan"] == ["basic", "plus", "pro"], meta


@pytest.mark.reliability
def test_the_tabular_service_holds_generated_requests(served, monkeypatch):
    """Issue 15's fuzz on this family's service too (its OpenAPI is built from the team's
    columns): no 5xx, every 4xx documented and matching its schema."""
    from tests.reliability.conftest import fuzz
    from tests.reliability.conftest import summary as findings_of
    from tests.serving.conftest import service_app

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOOPLINE_PROJECT", str(served["roots"]["churn"]))
    monkeypatch.setenv("LOOPLINE_SERVE_LOG_FLUSH_INTERVAL_S", "0.05")
    findings = fuzz(service_app())
    assert len(findings) > 50
    assert not findings_of(findings, "5xx"), findings_of(findings, "5xx")
    assert not findings_of(findings, "4xx"), findings_of(findings, "4xx")
