"""What keeps services and clients apart: each service its own metrics folder, ..."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def bentoml_metrics_folder():
    from bentoml._internal.configuration.containers import BentoMLContainer

    yield BentoMLContainer.prometheus_multiproc_dir
    BentoMLContainer.prometheus_multiproc_dir.reset()


def test_each_service_gets_its_own_prometheus_folder(bentoml_metrics_folder, tmp_path):
    from bentoml.serving import ensure_prometheus_dir

    from serving.champion import use_own_metrics_folder

    solar, digits = tmp_path / "solar-3000", tmp_path / "digits-3001"
    solar.mkdir()
    (solar / "counter_1.db").write_bytes(b"series")
    assert use_own_metrics_folder("digits", {"LOOPLINE_METRICS_DIR": str(digits)}) == str(digits)
    # What BentoML's main process does at start: create (and wipe) the folder it is given.
    assert ensure_prometheus_dir() == str(digits)
    assert (solar / "counter_1.db").read_bytes() == b"series"  # the other service's, kept
    # A worker is given the folder by its main process: nothing to choose there.
    assert use_own_metrics_folder("digits", {"PROMETHEUS_MULTIPROC_DIR": str(solar)}) is None
    default = use_own_metrics_folder("digits", {})
    assert default.endswith(f"digits-{os.getpid()}")


def test_loopline_serve_names_a_metrics_folder_per_model_and_port(served_project, monkeypatch):
    from typer.testing import CliRunner

    from loopline.cli import app

    started: list[dict[str, str]] = []

    def exec_instead(path, args, env):  # `serve` replaces itself with bentoml: catch that
        started.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvpe", exec_instead)
    monkeypatch.setenv("LOOPLINE_TASK", "solar")
    monkeypatch.delenv("LOOPLINE_METRICS_DIR", raising=False)
    for port in ("3100", "3101"):
        CliRunner().invoke(app, ["serve", "--port", port, "--project", str(served_project)])
    folders = [env["LOOPLINE_METRICS_DIR"] for env in started]
    assert folders == [
        str(served_project / ".loopline" / "metrics" / "solar-3100"),
        str(served_project / ".loopline" / "metrics" / "solar-3101"),
    ]
