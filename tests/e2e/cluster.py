"""What the cluster tests share: the project they run, the services every host reaches,
and reading back what the run did."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from loopline import registry
from loopline.offline.train import PLACEMENT_TAG
from tests.conftest import TINY

BIN = Path(sys.executable).parent

PARAMS = {
    **TINY,
    "tune": {
        # Two points, one trial each: the cluster and the single process try the same ones.
        "sampler": "grid",
        "n_trials": 2,
        "max_epochs": 2,
        "pruning": False,
        "search_space": {
            "hidden_size": {"choices": [16]},
            "num_layers": {"choices": [1]},
            "dropout": {"choices": [0.0]},
            "learning_rate": {"choices": [0.005]},
            "batch_size": {"choices": [32]},
            "window": {"choices": [24]},
            "cell": {"choices": ["lstm", "gru"]},
        },
    },
    "train": {"max_epochs": 3, "patience": 2, "threads": 1},
}


@contextlib.contextmanager
def tcp_relay(listen: str, target: tuple[str, int]):
    """Forward connections to `listen`:<port> on to `target`; yields the port."""
    server = socket.create_server((listen, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            for ends in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=ends, daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def postgres_target() -> tuple[object, tuple[str, int]]:
    from sqlalchemy.engine import make_url

    url = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL (.ci/run sets it)")
    parsed = make_url(url)
    return parsed, (parsed.host or "127.0.0.1", parsed.port or 5432)


def loopline_run(root: Path, env: dict, overrides: list[str]) -> dict:
    """`loopline run` in `root`; its summary (the last line it prints)."""
    command = [str(BIN / "loopline"), "run", *(a for o in overrides for a in ("-P", o))]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    (root / "run.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def clean_env() -> dict:
    drop = ("PREFECT_", "MLFLOW_", "LOOPLINE_HOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {
        "OMP_NUM_THREADS": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def partitions(root: Path) -> dict[str, str]:
    """The snapshot's Parquet partitions and their contents' hashes."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / "data").glob("*/part-*.parquet"))
    }


def trial_runs(tracking_uri: str, run_id: str) -> list[str]:
    """The states of the nested trial runs the flow logged from the shared study."""
    client = registry.client(tracking_uri)
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return [r.data.tags["loopline.trial_state"] for r in runs]


def on_cluster(address: str, storage: str) -> list[str]:
    """The overrides that hand the tuning study (in `storage`) and a two-process training to
    the Dask scheduler at `address`."""
    return [
        "tune.parallel.engine=dask",
        f"tune.parallel.address={address}",
        f"tune.parallel.storage={storage}",
        "train.processes=2",
        "train.launch.engine=dask",
        f"train.launch.address={address}",
    ]


def placement_hosts(tracking_uri: str, run_id: str) -> list[str]:
    """The hosts the run's training processes ran on (its placement tag), sorted."""
    placement = registry.client(tracking_uri).get_run(run_id).data.tags[PLACEMENT_TAG]
    return sorted(worker.split("//")[1].split(":")[0] for worker in placement.split(", "))
