"""Data-parallel training (`train.processes`): real worker processes started by PyTorch's
launcher, a gloo process group, DistributedDataParallel; nothing mocked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client, LocalCluster

from loopline.config import TrainLaunch, TrainParams
from loopline.offline.distributed import training_threads
from loopline.offline.features import FeatureSpec
from loopline.offline.labeling import Examples
from loopline.offline.train import fit, seed_everything
from loopline.tasks.solar.model import Forecaster
from loopline.tasks.solar.task import SolarHyperparameters

pytestmark = pytest.mark.timeout(300)

SPEC = FeatureSpec(
    task="t", feature_columns=["a", "b"], target_column="y", target_mean=0.0, target_std=1.0
)
HP = SolarHyperparameters.from_dict(
    {
        "hidden_size": 8,
        "num_layers": 1,
        "dropout": 0.0,
        "learning_rate": 0.01,
        "batch_size": 16,
        "window": 4,
        "cell": "gru",
    }
)


def examples(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 2)).astype(np.float32)
    y = np.repeat(x[:, -1, :1], 3, axis=1) * 2.0  # learnable: the last value of feature a
    return Examples(x, y.astype(np.float32), pd.DataFrame({"g": ["s"] * n}))


def train(processes: int, epochs: int = 6, checkpoint=None, on_epoch=None, launch=None):
    seed_everything(3)  # the initial weights are drawn when the model is built
    model = Forecaster(2, 3, hidden_size=8, dropout=0.0)
    params = TrainParams(max_epochs=epochs, patience=50, processes=processes)
    if launch is not None:
        params = params.model_copy(update={"launch": launch})
    return fit(
        model,
        examples(70, 1),  # 70 rows in batches of 16: the last batch of 6 splits 3 + 3
        examples(33, 2),  # an odd count: the processes score 17 and 16 rows
        SPEC,
        HP,
        params,
        seed=3,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
    )


@pytest.fixture(scope="module")
def alone():
    return train(processes=1)


def test_two_processes_take_the_steps_one_process_takes(alone):
    seen = []
    group = train(processes=2, on_epoch=seen.append)
    # Reported here, in the caller's process, epoch by epoch.
    assert [e.epoch for e in seen] == [1, 2, 3, 4, 5, 6]
    assert len(group.history) == len(alone.history)
    # Each global batch is split between the processes and their gradients averaged: the
    # same steps up to the order of float sums.
    for mine, theirs in zip(group.history, alone.history, strict=True):
        assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-3)
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-3)
    assert group.history[-1].val_loss < group.history[0].val_loss  # it learned
    for name, value in alone.model.state_dict().items():
        torch.testing.assert_close(group.model.state_dict()[name], value, rtol=1e-3, atol=1e-4)


class Pruned(Exception):
    pass


def test_an_on_epoch_that_raises_stops_every_process_and_is_raised_here(tmp_path):
    seen = []

    def prune_at_two(record):
        seen.append(record.epoch)
        if record.epoch == 2:
            raise Pruned

    checkpoint = tmp_path / "train.ckpt"
    with pytest.raises(Pruned):
        train(processes=2, epochs=6, checkpoint=checkpoint, on_epoch=prune_at_two)
    assert seen == [1, 2]
    # The group stopped after epoch 3 at the latest (the leader learns of the stop with the
    # next epoch's report); its checkpoint resumes to the same weights as a straight run.
    state = torch.load(checkpoint, weights_only=False)
    assert len(state["history"]) <= 3
    resumed = train(processes=2, epochs=6, checkpoint=checkpoint)
    straight = train(processes=2, epochs=6)
    assert [e.val_loss for e in resumed.history] == [e.val_loss for e in straight.history]


def test_a_model_that_fits_itself_is_refused_by_name():
    from loopline.tasks.tabular.model import Linear  # a model that fits itself

    params = TrainParams(processes=2)
    with pytest.raises(ValueError, match=r"Linear fits itself: set train\.processes: 1"):
        fit(Linear(3, False, 1.0), examples(10, 1), examples(10, 2), SPEC, HP, params, seed=1)


def test_threads_follow_the_cores_shared_among_the_processes():
    assert training_threads(3, 2) == 3  # set: kept
    assert training_threads(0, 1) >= 1
    assert training_threads(0, 10_000) == 1  # never none


class Signalled(Exception):
    pass


def test_a_signal_while_the_group_trains_reaches_this_process_handler_and_stops_the_workers():
    import os
    import signal
    import threading

    import psutil

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a signal's handler runs in the main thread only")

    def handler(signum, frame):
        raise Signalled

    def signal_once(record):
        if record.epoch == 1:  # the group is training: PyTorch's launcher holds the signals
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Signalled):
            train(processes=2, epochs=100_000, on_epoch=signal_once)
        # This process's handlers are its own again, and no worker is left behind.
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is not None
        workers = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        assert not [p for p in workers if "spawn_main" in " ".join(p.cmdline())]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_launcher_leaves_this_process_handlers_as_they_were(alone):
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    train(processes=2, epochs=1)
    assert {s: signal.getsignal(s) for s in before} == before


# ---------------------------------------------------------------------- on a Dask cluster


@pytest.fixture(scope="module")
def on_dask():
    """Two single-threaded workers of a cluster reached by its scheduler's address (a
    `LocalCluster` here; `tests/e2e/test_multi_host.py` runs one on several hosts)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield TrainLaunch(engine="dask", address=cluster.scheduler_address, timeout_seconds=60)


def test_two_processes_on_dask_workers_take_the_steps_one_process_takes(alone, on_dask):
    seen = []
    group = train(processes=2, on_epoch=seen.append, launch=on_dask)
    assert [e.epoch for e in seen] == [1, 2, 3, 4, 5, 6]  # reported here, epoch by epoch
    for mine, theirs in zip(group.history, alone.history, strict=True):
        assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-3)
    for name, value in alone.model.state_dict().items():
        torch.testing.assert_close(group.model.state_dict()[name], value, rtol=1e-3, atol=1e-4)


def test_a_dask_group_checkpoints_into_this_process_file_and_resumes_from_it(
    tmp_path, alone, on_dask
):
    # The workers may be other machines: the leader sends each epoch's state here, and a
    # resumed group starts from this file's contents. (The first group runs on a
    # LocalCluster of its own: `train.launch.address` unset.)
    def prune_at_two(record):
        if record.epoch == 2:
            raise Pruned

    checkpoint = tmp_path / "train.ckpt"
    own_cluster = TrainLaunch(engine="dask", timeout_seconds=60)
    with pytest.raises(Pruned):
        train(processes=2, checkpoint=checkpoint, on_epoch=prune_at_two, launch=own_cluster)
    # The leader learns of the stop through the scheduler: on a busy machine it may train
    # an epoch or more past the one that asked (every saved epoch is in the file).
    saved = len(torch.load(checkpoint, weights_only=False)["history"])
    assert saved >= 2
    seen = []
    resumed = train(processes=2, checkpoint=checkpoint, on_epoch=seen.append, launch=on_dask)
    assert [e.epoch for e in seen] == list(range(saved + 1, 7))  # went on after the file's
    assert len(resumed.history) == len(alone.history)
    for mine, theirs in zip(resumed.history, alone.history, strict=True):
        assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-3)


def test_a_rank_that_fails_fails_the_training_here_and_the_group_leaves_nothing(on_dask):
    seed_everything(3)
    wrong = Forecaster(5, 3, hidden_size=8, dropout=0.0)  # 5 features; the examples have 2
    params = TrainParams(max_epochs=2, processes=2).model_copy(update={"launch": on_dask})
    with pytest.raises(RuntimeError, match=r"input\.size"):
        fit(wrong, examples(40, 1), examples(20, 2), SPEC, HP, params, seed=3)
    with Client(on_dask.address) as client:
        left = client.run_on_scheduler(held_by_the_scheduler)
    assert [name for name in left if name.startswith("loopline-training-")] == []


def held_by_the_scheduler(dask_scheduler=None) -> list[str]:
    """The scheduler's named queues and events."""
    queues, events = dask_scheduler.extensions["queues"], dask_scheduler.extensions["events"]
    return [*queues.queues, *events._events]


def test_a_cluster_with_too_few_workers_is_named_with_its_count():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        launch = TrainLaunch(engine="dask", address=cluster.scheduler_address, timeout_seconds=2)
        with pytest.raises(ValueError, match=r"needs 2 Dask workers, but the cluster at .* has 1"):
            train(processes=2, epochs=1, launch=launch)
