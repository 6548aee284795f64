"""The `loopline` console script: its package answers `--help` without the heavy libraries,
`loopline models` shows each model's own metrics, and a command that moves the data
version says so and how to commit it."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from rich.console import Console
from typer.testing import CliRunner

from loopline.app.cli import app
from loopline.app.cli.common import data_version, data_version_moved, say_data_version
from loopline.app.cli.models import metric_columns, versions_table
from loopline.app.cli.monitor import print_summary
from loopline.paths import ProjectPaths
from tests.conftest import TINY, write_project


def version(number: str, **metrics: float) -> dict:
    return {
        "name": "m",
        "version": number,
        "aliases": [],
        "created": "2026-01-01T00:00:00+00:00",
        "data_version": "abc",
        "git_commit": "def",
        "metrics": metrics,
        "tags": {},
    }


def rendered(table) -> str:
    console = Console(width=300, record=True)
    console.print(table)
    return console.export_text()


def test_help_lists_every_command_without_importing_heavy_libraries():
    said = CliRunner().invoke(app, ["--help"])
    assert said.exit_code == 0
    for command in ("init", "run", "models", "serve", "schedule", "monitor", "deploy", "label"):
        assert command in said.output
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, loopline.app.cli; heavy = ('prefect', 'mlflow', 'torch', 'pandas'); "
            "print(sorted(m for m in heavy if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_a_classifiers_versions_show_its_own_metrics_not_rmse():
    classifier = [
        version("1", test_accuracy=0.9, test_macro_f1=0.88, val_accuracy=0.91),
        version("2", test_accuracy=0.93, test_macro_f1=0.9),
    ]
    assert metric_columns(classifier) == ["test_accuracy", "test_macro_f1"]
    shown = rendered(versions_table("m", classifier, "file:///x"))
    assert "accuracy" in shown and "0.93" in shown and "rmse" not in shown.lower()
    regressor = [version("1", test_rmse=2.5, test_mae=2.0), version("2", test_rmse=2.1)]
    assert metric_columns(regressor)[0] == "test_rmse"
    shown = rendered(versions_table("r", regressor, "file:///x"))
    assert "rmse" in shown and "accuracy" not in shown and "2.1" in shown
    own = [version("1", auc=0.7), version("2", auc=0.8, brier=0.1)]  # no test_* names
    assert metric_columns(own) == ["auc", "brier"]


def dvc_file(paths: ProjectPaths, md5: str) -> None:
    pointer = paths.root / "data.dvc"
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": f"{md5}.dir", "path": "data"}]}))


def test_a_changed_data_version_is_said_with_how_to_commit_it(tmp_path, capsys):
    paths = ProjectPaths.at(tmp_path)
    assert data_version(paths) == "none"
    dvc_file(paths, "0" * 32)
    before = data_version(paths)
    say_data_version(paths, before)
    assert "data.dvc" not in capsys.readouterr().err  # unchanged: nothing said
    dvc_file(paths, "1" * 32)
    say_data_version(paths, before)
    said = " ".join(capsys.readouterr().err.split())
    assert "data.dvc changed" in said and "git add data.dvc && git commit" in said
    assert data_version_moved("a", "a") is None


def test_the_monitor_summary_speaks_of_periods(capsys):
    print_summary(
        {
            "notes": ["v1: no ground truth joins the predictions yet"],
            "alarms": [
                {
                    "signal": "live_quality",
                    "model_version": "2",
                    "period_start": "2026-01-02T00:00:00+00:00",
                    "note": None,
                }
            ],
            "periods": 3,
            "predictions": 72,
            "mlflow_run_id": "abc",
        }
    )
    said = " ".join(capsys.readouterr().err.split())
    assert "period from 2026-01-02" in said and "3 periods tested of 72 predictions" in said


def test_monitor_starts_its_local_api_with_the_project_environment(tmp_path):
    """`loopline monitor` sets the project's Prefect environment before Prefect reads it
    (once, at import): its local API keeps its database in the project's state folder and
    gets the project's start-up timeout, not Prefect's 20 s."""
    root = write_project(tmp_path / "project", TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    bin_folder = os.path.dirname(sys.executable)
    subprocess.run(
        [os.path.join(bin_folder, "loopline"), "monitor"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # Nothing is served yet, so the pass itself has nothing to do; its API ran here.
    assert (ProjectPaths.at(root).prefect_home / "prefect.db").is_file()
