"""Shared fixtures: tiny projects on real components (no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A small but complete config: one site, two months, a two-trial search over tiny nets.
TINY = {
    "task": "solar",
    "seed": 7,
    "ingest": {"source": "builtin:solar", "start": "2021-01-01", "end": "2021-03-01"},
    "solar": {"sites": ["greensboro"]},
    "tune": {
        "sampler": "random",
        "n_trials": 2,
        "max_epochs": 2,
        "search_space": {
            "hidden_size": {"choices": [16]},
            "num_layers": {"choices": [1]},
            "dropout": {"low": 0.0, "high": 0.1},
            "learning_rate": {"low": 0.003, "high": 0.01, "log": True},
            "batch_size": {"choices": [32]},
            "window": {"choices": [24]},
            "cell": {"choices": ["lstm", "gru"]},
        },
    },
    "train": {"max_epochs": 8, "patience": 3},
}


def pytest_configure(config) -> None:
    # Under pytest-xdist the workers share CI's two cores: torch (and the flows and services
    # a test starts, which inherit the variable) take one thread each, or the workers'
    # thread pools fight over both cores and training runs many times slower.
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
    # Tests that give a command a HOME of its own still share the user's cache, where a new
    # project's migrated Prefect database is kept (`pipelines.temporary_server`).
    os.environ.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))


# Seconds each slow module took (`pytest --durations`, 3 workers on 2 cores, 2026-12-07).
# Modules run heaviest first (`make test` passes --no-loadscope-reorder): xdist's own order
# puts modules with many quick tests first, which left one worker running a two-minute
# module alone at the end of the suite while the others sat idle.
MODULE_SECONDS = {
    "tests/pipelines/test_schedule.py": 237,
    "tests/e2e/test_close_the_loop.py": 176,
    "tests/pipelines/test_resume.py": 167,
    "tests/serving/test_consumer.py": 114,
    "tests/e2e/test_init_custom.py": 105,
    "tests/pipelines/test_digits_flow.py": 102,
    "tests/e2e/test_deliver_safely.py": 92,
    "tests/serving/test_rollback_promote.py": 90,
    "tests/ui/test_operator_page.py": 86,
    "tests/pipelines/test_offline_flow.py": 84,
    "tests/e2e/test_multi_host.py": 90,
    "tests/model/test_distributed_training.py": 45,
    "tests/serving/test_live_service.py": 83,
    "tests/e2e/test_own_task.py": 78,
    "tests/e2e/test_make_run.py": 76,
    "tests/e2e/test_text_family.py": 73,
    "tests/pipelines/test_reviews_flow.py": 73,
    "tests/e2e/test_tabular_family.py": 72,
    "tests/reliability/test_run_signals.py": 68,
    "tests/pipelines/test_decisions.py": 50,
    "tests/reliability/test_families.py": 45,
    "tests/e2e/test_forecast_family.py": 35,
    "tests/serving/test_digits_service.py": 34,
    "tests/reliability/test_canary_faults.py": 34,
    "tests/serving/test_service_api.py": 32,
    "tests/serving/test_reviews_service.py": 29,
    "tests/pipelines/test_tuning_dask.py": 23,
    "tests/unit/test_contract_kit.py": 22,
    "tests/serving/test_service_limits.py": 21,
    "tests/serving/test_packaging.py": 19,
    "tests/reliability/test_rollback_checks.py": 18,
    "tests/serving/test_overload.py": 16,
    "tests/reliability/test_input_ranges.py": 15,
    "tests/serving/test_secrets.py": 15,
    "tests/reliability/test_leave_to_write.py": 12,
    "tests/pipelines/test_production_path.py": 11,
    "tests/pipelines/test_split_membership.py": 10,
}


def pytest_collection_modifyitems(config, items) -> None:
    """Heaviest modules first (a stable sort: tests keep their order within a module)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.nodeid.split("::")[0], 0))


def stop(process, sig: int) -> None:
    """Ask a started process to stop with `sig`; kill it if it has not within 30 s."""
    import subprocess

    process.send_signal(sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def write_project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture
def tiny_params() -> dict:
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_params) -> Path:
    """A fresh project folder with the tiny params and its own embedded state."""
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    return write_project(tmp_path / "proj", tiny_params)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test harness: a throwaway local API for flow tests."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
