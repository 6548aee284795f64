"""Where the embedded defaults keep their state, resolved from one place.

Everything lives under the project's state folder (`.loopline/`, or `$LOOPLINE_HOME`) with
absolute paths, so nothing depends on the working directory (MLflow's own default does).
Environment variables switch any part to a server: `MLFLOW_TRACKING_URI`, `PREFECT_API_URL`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    """Absolute paths of one Loopline project."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> ProjectPaths:
        return cls(Path(root).resolve())

    @property
    def state(self) -> Path:
        override = os.environ.get("LOOPLINE_HOME")
        return Path(override).resolve() if override else self.root / ".loopline"

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def snapshots(self, task: str) -> Path:
        return self.data / task

    def labels(self, task: str) -> Path:
        """People's labels for a task (`loopline label import`), DVC-tracked with the data."""
        return self.data / "labels" / f"{task}.parquet"

    def prediction_log_url(self, params) -> str:
        """Where the service logs its predictions: `serve.prediction_log`, or SQLite here."""
        return params.serve.prediction_log or f"sqlite:///{self.state / 'predictions.db'}"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def mlflow_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def dvc_remote(self) -> Path:
        return self.state / "dvc-remote"

    @property
    def runs(self) -> Path:
        """Scratch space for one pipeline run's files before they are logged."""
        return self.state / "runs"

    @property
    def cache(self) -> Path:
        """Stage results by cache key (Prefect result storage) and training checkpoints."""
        return self.state / "cache"

    @property
    def run_lock(self) -> Path:
        """Held by the offline run working on this project (`datastore.hold_project`)."""
        return self.state / "offline-run.lock"

    def tracking_uri(self) -> str:
        """`MLFLOW_TRACKING_URI` when set, else the project's SQLite store."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    def local_artifact_root(self) -> Path | None:
        """Where new experiments keep artifacts when MLflow is a database, not a server.

        A tracking server manages its own artifact store; a bare database URI would otherwise
        fall back to `./mlruns` in whatever folder the process started in.
        """
        uri = self.tracking_uri()
        return (
            None
            if uri.startswith(("http://", "https://", "databricks"))
            else (self.mlflow_artifacts)
        )


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` holding a params.yaml (else `start` itself)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def orchestrator_environment(paths: ProjectPaths) -> dict[str, str]:
    """Environment defaults that keep Prefect's local API inside the state folder and quiet.

    Applied with `setdefault` by the CLI before Prefect is imported, so a user's own
    `PREFECT_API_URL` (a real server) or settings always win.
    """
    return {
        "PREFECT_HOME": str(paths.prefect_home),
        # A fresh local API needs more than the default 20 s to start on 2 cores.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(paths.state / "dvc-site-cache"),
        "GIT_PYTHON_REFRESH": "quiet",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


QUIET_LOGGERS = (
    "great_expectations",
    "dvc",
    "mlflow",
    "alembic",
    "optuna",
    "torch.onnx",
    "distributed",
)


def apply_environment(paths: ProjectPaths) -> None:
    """Set `orchestrator_environment` defaults without overriding what the user set, and
    keep the libraries' INFO chatter (DVC's git hints, MLflow's migrations) off the console,
    where the flow reports its own progress per stage."""
    paths.state.mkdir(parents=True, exist_ok=True)
    for key, value in orchestrator_environment(paths).items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
