"""Loopline past one machine: a Dask scheduler and two workers, each in its own network
namespace, and the offline flow handing its tuning study and its training to the
scheduler's address: the trials run as tasks on the workers, and the final training runs
data-parallel (DDP, gloo) in one process per worker.

The test makes the network: a bridge in this namespace and a veth pair per host, each host's
address inside its namespace only. Every service the hosts share is reached over that
network, never through a shared folder:

- the Prefect API the workers report their task runs to (a real server on the bridge);
- the MLflow tracking server (proxied artifacts);
- the Optuna study's PostgreSQL, through a TCP relay on the bridge, because the CI database
  listens on loopback only;
- the tuning rows and the training examples, which reach the workers through the Dask
  cluster itself, and the training checkpoints, which come back through it;
- the training group's rendezvous, at the first worker's address.

The same project run in one process (its own SQLite MLflow store and Prefect's local API)
snapshots the same rows and publishes the same metrics: both runs try the same grid of
hyperparameters from the same seeds, and the two training processes take the steps one
process takes (each global batch split between them, the gradients averaged).

What does not run on the cluster yet: the data stages stay in the flow's process, and DVC
pushes from the flow's host only (README, "Scale out").

Skips, saying why, where namespaces cannot be made (not root, no `ip`, no permission) or
where no PostgreSQL is configured (LOOPLINE_TEST_POSTGRES_URL, which `.ci/run` sets).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from loopline.paths import ProjectPaths
from pipelines.deployments import local_server
from tests.conftest import write_project
from tests.e2e.cluster import (
    BIN,
    PARAMS,
    clean_env,
    loopline_run,
    on_cluster,
    partitions,
    placement_hosts,
    postgres_target,
    tcp_relay,
    trial_runs,
)
from tests.serving.conftest import mlflow_server

pytestmark = pytest.mark.e2e

TAG = str(os.getpid() % 100_000)
SUBNET = f"10.213.{os.getpid() % 250}"
SCHEDULER_PORT = 8786


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def bridged_traffic_allowed(bridge: str):
    """Where bridged packets pass through iptables (br_netfilter, as Docker leaves it, with
    a FORWARD policy of DROP), accept those between this bridge's ports for the test."""
    knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    filtered = knob.is_file() and knob.read_text().strip() == "1" and shutil.which("iptables")
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    if filtered:
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        if filtered:
            subprocess.run(["iptables", "-D", *rule], capture_output=True)


@contextlib.contextmanager
def network(names: list[str]):
    """A bridge with this namespace at `.1` and one namespace per name at `.2`, `.3`, ...:
    yields (this side's address, {name: Host})."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    bridge, made, hosts = f"llbr{TAG}", [], {}
    try:
        try:  # a machine that cannot make these (no CAP_NET_ADMIN, say) skips, saying why
            ip("link", "add", bridge, "type", "bridge")
            ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
            ip("link", "set", bridge, "up")
            for number, name in enumerate(names, start=2):
                namespace = f"ll{TAG}-{name}"
                outer, inner = f"llv{TAG}{number}", f"lli{TAG}{number}"
                ip("netns", "add", namespace)
                made.append(namespace)
                ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                ip("link", "set", inner, "netns", namespace)
                ip("link", "set", outer, "master", bridge, "up")
                ip("-n", namespace, "addr", "add", f"{SUBNET}.{number}/24", "dev", inner)
                ip("-n", namespace, "link", "set", inner, "up")
                ip("-n", namespace, "link", "set", "lo", "up")
                hosts[name] = Host(namespace, f"{SUBNET}.{number}")
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot make network namespaces here: {error.stderr.strip()}")
        with bridged_traffic_allowed(bridge):
            yield f"{SUBNET}.1", hosts
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@contextlib.contextmanager
def in_namespace(host: Host, command: list[str], log: Path, env: dict, cwd: Path):
    """A process in `host`'s namespace, its output in `log`; stopped on exit."""
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *command],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def dask_cluster(hosts: dict[str, Host], prefect_api: str, folder: Path):
    """A scheduler and two workers, one per namespace; yields the scheduler's address."""
    from distributed import Client

    address = f"tcp://{hosts['scheduler'].address}:{SCHEDULER_PORT}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "PREFECT_API_URL": prefect_api,  # the workers report their task runs there
        "OMP_NUM_THREADS": "1",
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    }
    scheduler = [str(BIN / "dask"), "scheduler", "--host", hosts["scheduler"].address]
    scheduler += ["--port", str(SCHEDULER_PORT), "--no-dashboard"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            in_namespace(
                hosts["scheduler"], scheduler, folder / "scheduler.log", env, folder / "scheduler"
            )
        )
        for name in ("worker-a", "worker-b"):
            worker = [str(BIN / "dask"), "worker", address, "--host", hosts[name].address]
            worker += ["--nthreads", "1", "--no-dashboard", "--name", name]
            host_env = env | {"PREFECT_HOME": str(folder / name / "prefect")}
            stack.enter_context(
                in_namespace(hosts[name], worker, folder / f"{name}.log", host_env, folder / name)
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            seen = {w["host"] for w in client.scheduler_info()["workers"].values()}
        assert seen == {hosts["worker-a"].address, hosts["worker-b"].address}
        yield address


def test_the_flow_tunes_and_trains_on_a_dask_cluster_of_three_network_namespaces(tmp_path):
    database, target = postgres_target()
    with contextlib.ExitStack() as stack:
        bridge, hosts = stack.enter_context(network(["scheduler", "worker-a", "worker-b"]))
        relay = stack.enter_context(tcp_relay(bridge, target))
        storage = database.set(host=bridge, port=relay).render_as_string(hide_password=False)
        prefect_api = stack.enter_context(
            local_server(ProjectPaths.at(tmp_path / "prefect"), host=bridge)
        )
        tracking = stack.enter_context(mlflow_server(tmp_path / "mlflow", bridge))
        address = stack.enter_context(dask_cluster(hosts, prefect_api, tmp_path / "cluster"))
        cluster_root = write_project(tmp_path / "on-cluster", PARAMS)
        env = clean_env() | {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": tracking}
        cluster_run = loopline_run(cluster_root, env, on_cluster(address, storage))
        ranks = placement_hosts(tracking, cluster_run["run_id"])
        trials = trial_runs(tracking, cluster_run["run_id"])
    single_root = write_project(tmp_path / "one-process", PARAMS)
    single = loopline_run(single_root, clean_env(), [])
    assert cluster_run["status"] == single["status"] == "published", (cluster_run, single)
    # Both grid points ran as tasks on the workers, in the study the workers shared.
    assert sorted(trials) == ["COMPLETE", "COMPLETE"], trials
    # The final training ran as one group of two processes, one on each worker's host.
    assert ranks == sorted([hosts["worker-a"].address, hosts["worker-b"].address]), ranks
    # The same rows, byte for byte. (The data version, DVC's hash of data/, also covers the
    # manifest's commit times and batch ids, so two runs never share it.)
    assert partitions(cluster_root) == partitions(single_root) != {}
    assert cluster_run["metrics"].keys() == single["metrics"].keys()
    for name, value in single["metrics"].items():
        assert cluster_run["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
