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
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psutil
import torch.distributed as dist
from distributed import Client, Event, LocalCluster, Queue, get_worker
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
    ran_on: dict[int, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # its queues and events, released at exit

    def placement(self) -> tuple[str, ...]:
        """Where each rank ran, as the rank itself reported it."""
        return tuple(self.ran_on[rank] for rank in sorted(self.ran_on))

    def queue(self) -> PickledQueue:
        return PickledQueue(Queue(self._name(), client=self.client))

    def event(self) -> Event:
        return Event(self._name(), client=self.client)

    def _name(self) -> str:
        self.names.append(f"loopline-training-{uuid.uuid4().hex}")
        return self.names[-1]

    def release(self) -> None:
        """Drop the group's queues and events from the scheduler, which keeps them (and any
        training state still queued) until told to."""
        with contextlib.suppress(Exception):  # a scheduler already gone holds nothing
            self.client.run_on_scheduler(_drop_named, self.names)

    def run(self, entry: Callable[..., Any], args: tuple) -> dict[int, Any]:
        """`entry(*args)` in each worker, all joined in one group; each rank's result. The
        first rank that fails fails the training (the others stop at their next collective,
        within the group's timeout), as does a worker that leaves the cluster."""
        # Pickled here, not by Dask: its own serializers for torch objects fail on a module
        # (a weakref in it) that plain pickle handles.
        payload = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        [shared] = self.client.scatter([payload], workers=self.workers, broadcast=True, hash=False)
        futures = self._submit(entry, shared)
        try:
            return self._results(futures)
        finally:
            self.client.cancel(list(futures))

    def _submit(self, entry: Callable[..., Any], shared: Any) -> dict[Any, int]:
        leader = self.workers[0]
        host = get_address_host(leader)
        port = self.client.run(_free_port, host, workers=[leader])[leader]
        name = uuid.uuid4().hex[:12]
        return {
            self.client.submit(
                _rank_on_worker,
                entry,
                shared,
                Rendezvous(f"tcp://{host}:{port}", rank, len(self.workers), self.timeout),
                key=f"loopline-training-{name}-rank-{rank}",
                workers=[worker],
                allow_other_workers=False,
                pure=False,
            ): rank
            for rank, worker in enumerate(self.workers)
        }

    def _results(self, futures: dict[Any, int]) -> dict[int, Any]:
        results, pending = {}, set(futures)
        while pending:
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                self.ran_on[futures[future]], results[futures[future]] = future.result()
            if not pending:
                break
            # A pinned task whose worker died would wait for it forever.
            gone = set(self.workers) - set(self.client.scheduler_info(n_workers=-1)["workers"])
            if gone:
                raise RuntimeError(
                    f"training worker(s) {', '.join(sorted(gone))} left the cluster while "
                    "the group trained"
                )
            time.sleep(0.5)
        return results


def _drop_named(names: list[str], dask_scheduler=None) -> None:
    queues, events = dask_scheduler.extensions["queues"], dask_scheduler.extensions["events"]
    for name in names:
        queues.queues.pop(name, None)
        queues.client_refcount.pop(name, None)
        events._events.pop(name, None)
        events._waiter_count.pop(name, None)


@contextlib.contextmanager
def dask_group(processes: int, launch: TrainLaunch) -> Iterator[DaskGroup]:
    """`processes` workers of the cluster at `launch.address`, or of a LocalCluster of
    `processes` single-threaded workers started for the block."""
    timeout = timedelta(seconds=launch.timeout_seconds)
    with contextlib.ExitStack() as stack:
        if launch.address:
            # Reaching the scheduler is not waiting on the group: a short group timeout
            # must not fail the connection on a busy machine.
            client = Client(launch.address, timeout="60s", set_as_default=False)
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=processes,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            client = Client(cluster, set_as_default=False)
        stack.enter_context(client)
        group = DaskGroup(client, _workers(client, processes, launch), timeout)
        try:
            yield group
        finally:
            group.release()


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


def _rank_on_worker(
    entry: Callable[..., Any], payload: bytes, rendezvous: Rendezvous
) -> tuple[str, Any]:
    """One process of the group, in a Dask worker: `entry(*args)` with the group joined
    (`payload`: the pickled args); returns where it ran and what `entry` returned."""
    if dist.is_initialized():
        raise RuntimeError(
            f"worker {get_worker().address} already runs a training group (a worker with "
            "several threads): start the cluster's workers with --nthreads 1, or train one "
            "group at a time"
        )
    args = pickle.loads(payload)
    # Gloo connects its processes through the interface of the host name's address, which
    # on a machine with several networks (or in a network namespace) may be one the other
    # workers cannot reach: use the one the cluster reaches this worker on.
    interface = interface_of(get_address_host(get_worker().address))
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    with process_group(rendezvous):
        return get_worker().address, entry(*args)


def interface_of(host: str) -> str | None:
    """The network interface holding address `host` on this machine, if one does."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == host for address in addresses):
            return name
    return None
