"""Training processes on a Dask cluster: one process of a torch.distributed group per Dask
worker, on as many machines as the cluster spans.

`train.launch.engine: dask` runs the `train.processes` processes of a data-parallel training
on workers of the cluster at `train.launch.address` (a LocalCluster of that many workers
when unset) instead of starting them on this machine. Dask places them, one pinned task per
worker; torch.distributed joins them (gloo, a TCP rendezvous at the first worker's
address). Nothing goes through a shared folder: the examples reach the workers through the
cluster, and the epoch records and checkpoints come back through a Dask queue.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psutil
from distributed import Client, Event, LocalCluster, Queue, as_completed, get_worker
from distributed.comm import get_address_host

from loopline.config import TrainLaunch
from loopline.offline.distributed import Rendezvous, process_group


@dataclass
class PickledQueue:
    """A Dask queue of any picklable item (Dask's own carries msgpack data only)."""

    queue: Queue

    def put(self, item: Any) -> None:
        self.queue.put(pickle.dumps(item))

    def get(self) -> Any:
        return pickle.loads(self.queue.get())


@dataclass
class DaskGroup:
    """The workers one training group runs on, and the client that reaches them."""

    client: Client
    workers: list[str]
    timeout: timedelta
    shares_files = False  # the workers may be other machines: no path of ours is theirs

    def placement(self) -> tuple[str, ...]:
        return tuple(self.workers)

    def queue(self) -> PickledQueue:
        return PickledQueue(Queue(f"loopline-training-{uuid.uuid4().hex}", client=self.client))

    def event(self) -> Event:
        return Event(f"loopline-training-{uuid.uuid4().hex}", client=self.client)

    def run(self, entry: Callable[..., Any], args: tuple) -> dict[int, Any]:
        """`entry(*args)` in each worker, all joined in one group; each rank's result. The
        first rank that fails fails the training (the others stop at their next collective,
        within the group's timeout)."""
        # Pickled here, not by Dask: its own serializers for torch objects fail on a module
        # (a weakref in it) that plain pickle handles.
        payload = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        [shared] = self.client.scatter([payload], workers=self.workers, broadcast=True, hash=False)
        leader = self.workers[0]
        host = get_address_host(leader)
        port = self.client.run(_free_port, host, workers=[leader])[leader]
        init = f"tcp://{host}:{port}"
        name = uuid.uuid4().hex[:12]
        futures = {
            self.client.submit(
                _rank_on_worker,
                entry,
                shared,
                Rendezvous(init, rank, len(self.workers), self.timeout),
                key=f"loopline-training-{name}-rank-{rank}",
                workers=[worker],
                allow_other_workers=False,
                pure=False,
            ): rank
            for rank, worker in enumerate(self.workers)
        }
        results = {}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        finally:
            self.client.cancel(list(futures))
        return results


@contextlib.contextmanager
def dask_group(processes: int, launch: TrainLaunch) -> Iterator[DaskGroup]:
    """`processes` workers of the cluster at `launch.address`, or of a LocalCluster of
    `processes` single-threaded workers started for the block."""
    timeout = timedelta(seconds=launch.timeout_seconds)
    with contextlib.ExitStack() as stack:
        if launch.address:
            client = stack.enter_context(Client(launch.address, timeout="60s"))
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=processes,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster))
        yield DaskGroup(client, _workers(client, processes, launch), timeout)


def _workers(client: Client, processes: int, launch: TrainLaunch) -> list[str]:
    """The first `processes` workers by address, once the cluster has that many."""
    try:
        client.wait_for_workers(processes, timeout=launch.timeout_seconds)
    except TimeoutError as error:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        raise ValueError(
            f"train.processes: {processes} needs {processes} Dask workers, but the cluster at "
            f"{launch.address or 'LocalCluster'} has {have} after {launch.timeout_seconds} s "
            "(train.launch.timeout_seconds)"
        ) from error
    return sorted(client.scheduler_info(n_workers=-1)["workers"])[:processes]


def _free_port(host: str) -> int:
    """A port free at `host` (the worker's address) now, for the group's rendezvous."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _rank_on_worker(entry: Callable[..., Any], payload: bytes, rendezvous: Rendezvous) -> Any:
    """One process of the group, in a Dask worker: `entry(*args)` with the group joined
    (`payload`: the pickled args)."""
    args = pickle.loads(payload)
    # Gloo connects its processes through the interface of the host name's address, which
    # on a machine with several networks (or in a network namespace) may be one the other
    # workers cannot reach: use the one the cluster reaches this worker on.
    interface = interface_of(get_address_host(get_worker().address))
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    with process_group(rendezvous):
        return entry(*args)


def interface_of(host: str) -> str | None:
    """The network interface holding address `host` on this machine, if one does."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == host for address in addresses):
            return name
    return None
