"""Data-parallel training over several processes with torch.distributed.

`train.processes: N` (N > 1) trains one model in N worker processes started by PyTorch's
own launcher (`torch.distributed.launcher.api.elastic_launch`, what `torchrun` runs), which
meet through its c10d rendezvous and join one process group (gloo: the training loop runs on
the CPU). Each worker wraps the model in `DistributedDataParallel`; each global batch of
the single-process loop is split among the workers by position (`Shard.rows`) and the
gradients are averaged, so N workers take the same steps as one process would, up to the
order of float sums. This module holds what does not depend on the loop: where a process
stands in its group, the collectives the loop needs, the launch, and the threads each
process should use.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import joblib
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.launcher.api import LaunchConfig, elastic_launch


@dataclass(frozen=True)
class Shard:
    """This process's place in the training group: `rank` of `world` processes."""

    rank: int
    world: int

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch: every `world`-th row from `rank` (the
        shares differ in size by one row at most)."""
        return index[self.rank :: self.world]

    def sum(self, value: float) -> float:
        """`value` summed over the group."""
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total.item())

    def any(self, flag: bool) -> bool:
        """Whether any process of the group raised `flag` (every process must ask)."""
        raised = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(raised, op=dist.ReduceOp.MAX)
        return bool(raised.item())

    @property
    def leads(self) -> bool:
        """The process that reports, saves checkpoints and returns the result."""
        return self.rank == 0


def current_shard() -> Shard | None:
    """This process's shard, when it is one of a training group of several (else None)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Shard(dist.get_rank(), dist.get_world_size())


@dataclass(frozen=True)
class Rendezvous:
    """Where a group's processes meet when no launcher set their environment: the leading
    process's `tcp://host:port`, this process's rank, the group's size, and how long a
    process waits on the others before it fails."""

    init_method: str
    rank: int
    world: int
    timeout: timedelta


@contextlib.contextmanager
def process_group(rendezvous: Rendezvous | None = None) -> Iterator[Shard]:
    """Join a training group for the block: the one the launcher set up (its environment:
    RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), or the one at `rendezvous`; gloo, since the
    loop trains on the CPU."""
    if rendezvous is None:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group(
            "gloo",
            init_method=rendezvous.init_method,
            rank=rendezvous.rank,
            world_size=rendezvous.world,
            timeout=rendezvous.timeout,
        )
    try:
        yield Shard(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def in_group(entry: Callable[..., Any], *args: Any) -> Any:
    """`entry(*args)` in the group the launcher set up (what each launched process runs)."""
    with process_group():
        return entry(*args)


# What PyTorch's launcher takes over in the main thread (its TORCHELASTIC_SIGNALS_TO_HANDLE
# default) and never hands back: its handler raises `SignalException` for each.
LAUNCHER_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


def launch(entry: Callable[..., Any], args: tuple, processes: int) -> dict[int, Any]:
    """Run `entry(*args)` in `processes` worker processes on this machine, through
    PyTorch's elastic launcher (a c10d rendezvous on a free local port, no restarts: a
    failed worker fails the training); returns each rank's result.

    The process's own signal handlers are back once it returns, and a signal that came
    while the group trained (the launcher stopped the workers) is delivered to them again:
    a signalled run ends as any signalled run does (`pipelines.temporary_server`)."""
    saved = _handlers()
    try:
        return _launch(entry, args, processes)
    except SignalException as error:
        _restore(saved)
        signal.raise_signal(error.sigval)  # this process's own handler decides
        raise
    finally:
        _restore(saved)


@dataclass
class LocalGroup:
    """A training group of `processes` processes on this machine (`launch`), with queues
    and events its processes reach (a multiprocessing manager's)."""

    manager: Any
    processes: int
    shares_files = True  # the processes run here: a checkpoint path is theirs too

    def queue(self) -> Any:
        return self.manager.Queue()

    def event(self) -> Any:
        return self.manager.Event()

    def run(self, entry: Callable[..., Any], args: tuple) -> dict[int, Any]:
        return launch(entry, args, self.processes)

    def placement(self) -> tuple[str, ...]:
        return tuple(f"{socket.gethostname()} (local)" for _ in range(self.processes))


@contextlib.contextmanager
def local_group(processes: int) -> Iterator[LocalGroup]:
    """A group of `processes` processes started on this machine, from this process."""
    if multiprocessing.current_process().daemon:
        raise ValueError(
            f"train.processes: {processes} starts training processes, which this daemonic "
            "process may not (a Dask worker's, say): set train.launch.engine: dask to run "
            "them on the cluster's workers, or train.processes: 1"
        )
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield LocalGroup(manager, processes)


def _handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # (the launcher sets handlers only from the main thread)
    numbers = [getattr(signal, name) for name in LAUNCHER_SIGNALS]
    found = {number: signal.getsignal(number) for number in numbers}
    return {number: handler for number, handler in found.items() if handler is not None}


def _restore(saved: dict[signal.Signals, Any]) -> None:
    for number, handler in saved.items():
        signal.signal(number, handler)


def _launch(entry: Callable[..., Any], args: tuple, processes: int) -> dict[int, Any]:
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"loopline-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    return elastic_launch(config, in_group)(entry, *args)


def cores() -> int:
    """The cores this process may use: its CPU affinity and its container's CPU quota
    (joblib's count; `os.cpu_count()` sees the whole host)."""
    return max(1, joblib.cpu_count())


def training_threads(threads: int, processes: int) -> int:
    """Intra-op threads per training process: `threads` when set, else the cores this
    process may use shared among the `processes` of its group (at least one)."""
    return threads if threads > 0 else max(1, cores() // max(1, processes))
