"""Train: a PyTorch training loop in small named pieces, with early stopping on validation loss.

Every epoch's training and validation loss is reported through `on_epoch`, so the caller
can log curves (MLflow) or report progress (CLI) without the loop knowing about either.

A model that fits itself (`FitsItself`: say, scikit-learn trees wrapped in an `nn.Module`)
skips the loop: `fit` hands it the same examples and scores it with the same loss, so
tuning can weigh it against a gradient-trained model trial by trial.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import pickle
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from loopline.config import TrainParams
from loopline.offline import cluster, distributed, transfer
from loopline.offline.distributed import Shard
from loopline.offline.features import FeatureSpec, scale_target
from loopline.offline.labeling import Examples
from loopline.offline.tracking import RunTracker, record_epoch, training_summary, transfer_tags
from loopline.plots import new_figure, save_figure
from loopline.tasks.base import Hyperparameters


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches; same seed and data → same weights and metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def use_training_threads(params: TrainParams) -> None:
    """Intra-op threads for this training process (`distributed.training_threads`)."""
    set_threads(distributed.training_threads(params.threads, params.processes))


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    val_loss: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[Epoch]
    best_epoch: int  # the epoch after which validation loss stopped improving
    best_val_loss: float
    stopped_early: bool
    hparams: dict[str, Any] = field(default_factory=dict)
    # With `train.init_from`: the layer groups copied from the source and those left fresh.
    started: Any = None
    # Where each process of a training group ran, in rank order (empty: one process).
    placement: tuple[str, ...] = ()

    @property
    def overfitting_onset(self) -> int | None:
        """The first epoch past the best one, when training went on past it."""
        last = self.history[-1].epoch if self.history else 0
        return self.best_epoch + 1 if last > self.best_epoch else None


def to_tensors(examples: Examples, spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as they are; regression targets scaled, class labels kept as integer ids."""
    x = torch.from_numpy(examples.x)
    if np.issubdtype(examples.y.dtype, np.integer):
        return x, torch.from_numpy(examples.y.astype(np.int64))
    return x, torch.from_numpy(scale_target(examples.y, spec))


def summed_loss(model: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The model's own loss (summed over the batch) when it defines one, else summed MSE:
    a classifier brings cross-entropy, a regressor uses the default."""
    if hasattr(model, "loss"):
        return model.loss(output, target)
    return nn.functional.mse_loss(output, target, reduction="sum")


def batch_inputs(model: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of `x`, trimmed by the model when it knows how (a text model drops the
    padding columns no row of this batch needs: padded to the longest text of the whole
    set, a batch of short texts would cost several times its compute)."""
    rows = x[index]
    return model.trim(rows) if hasattr(model, "trim") else rows


def _per_row(target: torch.Tensor) -> int:
    # Losses are reported per target value: per predicted step, per label of a class.
    return int(target[0].numel()) if len(target) else 1


# Random changes to a training batch (say, shifted or rotated images), drawn from the
# training loop's generator so a seed gives the same changes and a resume continues them.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class FineTuning(Protocol):
    """How a pre-trained model is fine-tuned (a task's pretraining): which parameters
    train at what rate, and what changes before each epoch (say, unfreezing a layer)."""

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]]: ...

    def before_epoch(self, model: nn.Module, epoch: int) -> None: ...


@runtime_checkable
class FitsItself(Protocol):
    """A model that trains itself instead of by the gradient loop: say, a scikit-learn
    estimator held by an `nn.Module` whose `forward` runs it on NumPy.

    `fit` calls `fit_examples` once with the tensors the loop would see (inputs; class ids,
    or a regression's scaled target) and then scores the model exactly as it scores a
    gradient-trained one (`eval_loss`: its `loss`, or MSE, on `forward`'s outputs), so a
    tuning trial of either kind is judged on one scale. The history is that one "epoch".

    The fitted state travels in the module's `state_dict` through `get_extra_state` /
    `set_extra_state` (`pickled_state` / `unpickled_state`: a uint8 tensor, which
    `torch.load(weights_only=True)` accepts), so checkpoints, `torch/model.pt`,
    `load_checkpoint`, `predict` and the parity check work unchanged. Unpickling runs code:
    load only checkpoints this project wrote (its own runs). Such a model cannot start from
    another's weights (`train.init_from`) and takes no fine-tuning or augmentation.
    """

    def fit_examples(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        seed: int,
    ) -> None: ...


def pickled_state(value: Any) -> torch.Tensor:
    """`value` pickled into a uint8 tensor: a `FitsItself` model's `get_extra_state`."""
    return torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)


def unpickled_state(state: torch.Tensor) -> Any:
    """What `pickled_state` stored (a `FitsItself` model's `set_extra_state`)."""
    return pickle.loads(state.numpy().tobytes())


def _fit_itself(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    hparams: Hyperparameters,
    seed: int,
    on_epoch: Callable[[Epoch], None] | None,
) -> TrainResult:
    model.fit_examples(*train, *val, seed)
    record = Epoch(1, eval_loss(model, *train), eval_loss(model, *val))
    if on_epoch is not None:
        on_epoch(record)
    model.eval()
    return TrainResult(model, [record], 1, record.val_loss, False, hparams.to_dict())


BUCKET_BATCHES = 50  # batches per length bucket


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    lengths: torch.Tensor | None = None,
):
    """Index batches over n rows; shuffled when a generator is given.

    With `lengths` (say, tokens per text), rows are shuffled, then each run of
    `BUCKET_BATCHES` batches is sorted by length before it is cut and the batches are
    shuffled again: a batch then holds texts of similar length and pads little, while
    the order stays random from epoch to epoch (a "bucket iterator").
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if lengths is None or generator is None:
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]
        return
    parts: list[torch.Tensor] = []
    chunk = batch_size * BUCKET_BATCHES
    for start in range(0, n, chunk):
        rows = order[start : start + chunk]
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        parts.extend(rows.split(batch_size))
    for i in torch.randperm(len(parts), generator=generator).tolist():
        yield parts[i]


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    grad_clip: float,
    augment: Augment | None = None,
    shard: Shard | None = None,
    augment_generator: torch.Generator | None = None,
) -> float:
    """One pass over the training rows in shuffled batches. With `shard` (one process of a
    training group), `model` is its `DistributedDataParallel` wrapper: every process draws
    the same batches (the same generator), trains on its share of each, and the averaged
    gradients make the step one process would take on the whole batch."""
    inner = model.module if shard is not None else model
    model.train()
    _hold_frozen_batch_norm(model)
    total = 0.0
    lengths = inner.lengths(x) if hasattr(inner, "lengths") else None
    for index in batches(len(x), batch_size, generator, lengths):
        rows = index
        if shard is not None:
            if len(index) < shard.world:  # a share per process or none: every one steps
                continue
            rows = shard.rows(index)
        optimizer.zero_grad(set_to_none=True)
        inputs = batch_inputs(inner, x, rows)
        if augment is not None:  # training batches only: never validation, test or serving
            inputs = augment(inputs, augment_generator or generator)
        loss = summed_loss(inner, model(inputs), y[rows])
        mean = loss / len(index)  # the batch's mean loss
        if shard is not None:  # the group averages its processes' gradients: each share
            mean = mean * shard.world  # of the batch's sum counts `world` times
        mean.backward()
        # Recurrent nets blow up on the odd long gradient; clipping keeps one batch from
        # undoing an epoch.
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.item()  # a sync point, once per batch, fine on CPU
    if shard is not None:
        total = shard.sum(total)
    return total / (len(x) * _per_row(y))


def _hold_frozen_batch_norm(model: nn.Module) -> None:
    """A frozen layer (fine-tuning) keeps its batch-norm statistics too: in training mode
    they would drift to the new data while the weights around them stay fixed."""
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
        if is_norm and not any(p.requires_grad for p in module.parameters()):
            module.eval()


@torch.no_grad()
def eval_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    shard: Shard | None = None,
) -> float:
    """The mean loss over `x`; with `shard`, each process scores its share of the rows and
    the group sums them (every process gets the same value)."""
    model.eval()
    total = 0.0
    rows = torch.arange(len(x))
    for index in (rows if shard is None else shard.rows(rows)).split(batch_size):
        total += summed_loss(model, model(batch_inputs(model, x, index)), y[index]).item()
    if shard is not None:
        total = shard.sum(total)
    return total / (len(x) * _per_row(y))


def fit(
    model: nn.Module,
    train: Examples,
    val: Examples,
    spec: FeatureSpec,
    hparams: Hyperparameters,
    params: TrainParams,
    seed: int,
    max_epochs: int | None = None,
    on_epoch: Callable[[Epoch], None] | None = None,
    checkpoint: Path | RelayedCheckpoint | None = None,
    fine_tuning: FineTuning | None = None,
    augment: Augment | None = None,
) -> TrainResult:
    """Train with early stopping on validation loss; return the best epoch's weights.

    `on_epoch` may raise to stop training (the tuner uses that to prune a trial). With
    `checkpoint`, the whole training state is saved after every epoch and a run that finds
    one there continues after its last epoch, with the same RNG states, so a killed and
    resumed training ends with the same weights as an uninterrupted one. `fine_tuning` sets
    per-layer learning rates and a freezing schedule for a pre-trained model. With
    `params.processes` > 1 the model trains data-parallel in that many processes
    (`loopline.offline.distributed`); `on_epoch` still runs here, epoch by epoch.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need training and validation examples, got {len(train)} and {len(val)}")
    shard = distributed.current_shard()
    if params.processes > 1 and shard is None:
        return _fit_in_processes(
            model, train, val, spec, hparams, params, seed, max_epochs, on_epoch, checkpoint,
            fine_tuning, augment,
        )  # fmt: skip
    seed_everything(seed)
    use_training_threads(params)
    x_train, y_train = to_tensors(train, spec)
    x_val, y_val = to_tensors(val, spec)
    if isinstance(model, FitsItself):
        if fine_tuning is not None or augment is not None:
            raise ValueError(f"{type(model).__name__} fits itself: no fine-tuning or augmentation")
        # One fit, quick to redo: a resumed run fits again rather than reading a checkpoint.
        return _fit_itself(model, (x_train, y_train), (x_val, y_val), hparams, seed, on_epoch)
    # Wrapped before the optimizer takes the parameters (DDP makes them the group's).
    trained = nn.parallel.DistributedDataParallel(model) if shard is not None else model
    learning_rate = hparams.learning_rate
    groups = (
        fine_tuning.param_groups(model, learning_rate)
        if fine_tuning is not None
        else model.parameters()
    )
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: list[Epoch] = []
    best_loss, best_epoch, best_state, waited = float("inf"), 0, None, 0
    stopped_early = False
    state = _load_training_state(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        _set_rng_states(state["rng"])
        history = [Epoch(**e) for e in state["history"]]
        best_loss, best_epoch, waited = state["best_loss"], state["best_epoch"], state["waited"]
        best_state = state["best_state"]
        if waited >= params.patience:
            stopped_early = True
    first = len(history) + 1
    for epoch in range(first, (max_epochs or params.max_epochs) + 1):
        if stopped_early:
            break
        if fine_tuning is not None:
            fine_tuning.before_epoch(model, epoch)
        train_loss = train_epoch(
            trained,
            x_train,
            y_train,
            optimizer,
            hparams.batch_size,
            generator,
            params.grad_clip,
            augment,
            shard,
            _augment_generator(seed, shard, epoch),
        )
        val_loss = eval_loss(model, x_val, y_val, shard=shard)
        record = Epoch(epoch, train_loss, val_loss)
        history.append(record)
        if val_loss < best_loss - params.min_delta:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        if waited >= params.patience:
            stopped_early = True
        if checkpoint is not None and (shard is None or shard.leads):
            _save_training_state(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "rng": _rng_states(),
                    "history": [asdict(e) for e in history],
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "waited": waited,
                    "best_state": best_state,
                },
            )
        if shard is None:
            if on_epoch is not None:
                on_epoch(record)
        elif _asked_to_stop(on_epoch, record, shard):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, best_loss, stopped_early, hparams.to_dict())


class StopTraining(Exception):
    """Raised by a training group's reporter when the caller's `on_epoch` stopped it."""


def _asked_to_stop(on_epoch, record: Epoch, shard: Shard) -> bool:
    """Report `record` (the leading process reports) and agree, all processes, whether the
    caller asked to stop."""
    stop = False
    if on_epoch is not None:
        try:
            on_epoch(record)
        except StopTraining:
            stop = True
    return shard.any(stop)


def _augment_generator(seed: int, shard: Shard | None, epoch: int) -> torch.Generator | None:
    """A process's own draws for augmenting its share (None in one process: the batches'
    generator, as always). Derived from the epoch, so a resumed group draws the same."""
    if shard is None:
        return None
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + shard.rank)


def _fit_in_processes(
    model, train, val, spec, hparams, params: TrainParams, seed, max_epochs, on_epoch,
    checkpoint, fine_tuning, augment,
) -> TrainResult:  # fmt: skip
    """`fit` in a group of `params.processes` processes (on this machine, or on a Dask
    cluster: `params.launch`); the leading process's result. Each epoch the leader sends
    its record here, where `on_epoch` runs; when `on_epoch` raises, the group stops after
    that epoch and the error is raised here."""
    if isinstance(model, FitsItself) or fine_tuning is not None:
        kind = "fits itself" if fine_tuning is None else "fine-tunes a pretrained model"
        raise ValueError(
            f"train.processes: {params.processes} trains by gradient steps in several "
            f"processes, but {type(model).__name__} {kind}: set train.processes: 1"
        )
    with _training_group(params) as group:
        records, stop = group.queue(), group.event()
        failure: list[BaseException] = []

        def relay() -> None:
            for item in iter(records.get, None):
                try:
                    if isinstance(item, SavedState):
                        _write_atomically(checkpoint, item.data)
                    elif on_epoch is not None and not failure:
                        on_epoch(item)
                except BaseException as error:  # raised below, once the group has stopped
                    failure.append(error)
                    stop.set()

        reader = threading.Thread(target=relay, name="training-epochs", daemon=True)
        reader.start()
        kept = checkpoint if group.shares_files else _relayed(checkpoint, records)
        try:
            results = group.run(
                _fit_worker,
                (model, train, val, spec, hparams, params, seed, max_epochs, kept, augment,
                 EpochSender(records, stop)),
            )  # fmt: skip
        finally:
            records.put(None)
            reader.join()
    if failure:
        raise failure[0]
    return dataclasses.replace(results[0], placement=group.placement())


def _training_group(params: TrainParams):
    """The processes a group trains in: started here, or one per worker of a Dask cluster."""
    if params.launch.engine == "dask":
        return cluster.dask_group(params.processes, params.launch)
    return distributed.local_group(params.processes)


@dataclass
class EpochSender:
    """The leading process's `on_epoch`: each record to the caller's process, and a stop
    when the caller asked for one."""

    records: Any
    stop: Any

    def __call__(self, record: Epoch) -> None:
        self.records.put(record)
        if self.stop.is_set():
            raise StopTraining


@dataclass(frozen=True)
class SavedState:
    """A training state the leading process saved, on its way to the caller's file."""

    data: bytes


@dataclass(frozen=True)
class RelayedCheckpoint:
    """The checkpoint of a group whose processes may run on other machines: the file stays
    with the caller, the group starts from its contents (`saved`), and the leader sends
    each epoch's state to `records`, which the caller writes to the file."""

    saved: bytes | None
    records: Any


def _relayed(checkpoint: Path | None, records: Any) -> RelayedCheckpoint | None:
    if checkpoint is None:
        return None
    saved = checkpoint.read_bytes() if checkpoint.exists() else None
    return RelayedCheckpoint(saved, records)


def _fit_worker(
    model, train, val, spec, hparams, params, seed, max_epochs, checkpoint, augment, sender
):
    """One process of a training group, which the launcher joined to the group."""
    # The launcher hands tensors over in shared memory: every process would step the same
    # weights. Each trains its own copy (the group keeps the copies equal).
    model = copy.deepcopy(model)
    shard = distributed.current_shard()
    result = fit(
        model,
        train,
        val,
        spec,
        hparams,
        params,
        seed,
        max_epochs=max_epochs,
        on_epoch=sender if shard.leads else None,
        checkpoint=checkpoint,
        augment=augment,
    )
    return result if shard.leads else None


def _rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _save_training_state(checkpoint: Path | RelayedCheckpoint, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if isinstance(checkpoint, RelayedCheckpoint):
        checkpoint.records.put(SavedState(buffer.getvalue()))
    else:
        _write_atomically(checkpoint, buffer.getvalue())


def _write_atomically(path: Path, data: bytes) -> None:
    # Written aside and renamed: a kill during the write leaves the previous epoch's state.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _load_training_state(checkpoint: Path | RelayedCheckpoint | None) -> dict[str, Any] | None:
    if isinstance(checkpoint, RelayedCheckpoint):
        saved = checkpoint.saved
    else:
        saved = checkpoint.read_bytes() if checkpoint is not None and checkpoint.exists() else None
    if saved is None:
        return None
    # Our own file in the state folder (NumPy RNG state and Python tuples need full pickle).
    return torch.load(io.BytesIO(saved), weights_only=False)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs for inputs `x` (a regressor's in target units)."""
    model.eval()
    tensor = torch.from_numpy(x)
    parts = [
        model.predict(batch_inputs(model, tensor, index))
        for index in batches(len(tensor), batch_size, None)
    ]
    if not parts:
        return np.zeros((0, 0), np.float32)
    return torch.cat(parts).numpy()


def plot_learning_curves(result: TrainResult, path: Path, title: str = "") -> Path:
    """Training and validation loss per epoch, the best epoch marked: a PNG."""
    epochs = [e.epoch for e in result.history]
    fig, ax = new_figure()
    ax.plot(epochs, [e.train_loss for e in result.history], marker="o", label="training loss")
    ax.plot(epochs, [e.val_loss for e in result.history], marker="o", label="validation loss")
    ax.axvline(
        result.best_epoch,
        color="grey",
        linestyle="--",
        label=f"best epoch {result.best_epoch} (validation stops improving)",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled target)")
    ax.set_yscale("log")
    ax.set_title(title or "Learning curves")
    return save_figure(fig, ax, path)


@dataclass
class Start:
    """A model ready to train: its spec and hyperparameters, and how it fine-tunes."""

    model: nn.Module
    spec: FeatureSpec
    hparams: Hyperparameters
    fine_tuning: FineTuning | None
    started: Any = None  # transfer.Started, when it starts from another model


def initial_model(task, spec: FeatureSpec, hparams: dict[str, Any], params, source=None) -> Start:
    """The model a training (or a tuning trial) starts from: random weights seeded from
    params, or, with `source` (`transfer.SourceModel`), that model's weights, shape and
    input encoding, fine-tuned per `train.transfer`."""
    if source is not None:
        transfer.check_task(source, task.name)
        hparams = transfer.fixed_hparams(hparams, source, task.architecture)
        spec = transfer.inherit_spec(spec, source, task.transferred_features)
    typed = task.Hyperparameters.from_dict(hparams)
    spec = task.configure(spec, typed)
    seed_everything(params.seed)  # the initial weights are drawn here
    model = task.build_model(typed, spec)
    if source is not None and isinstance(model, FitsItself):
        raise ValueError(
            f"{type(model).__name__} fits itself: train.init_from cannot start it from another "
            "model's weights"
        )
    if source is None:
        return Start(model, spec, typed, task.fine_tuning(spec, params.train.transfer))
    started = transfer.start_from(model, source, spec)
    strategy = transfer.strategy_from(params.train.transfer)
    if isinstance(strategy, transfer.Freeze):
        stuck = sorted(set(started.fresh) & strategy.frozen(model))
        if stuck:
            raise ValueError(
                f"train.transfer.freeze holds {stuck}, which start fresh ({started.reason}): "
                "they would never learn; freeze only copied groups"
            )
    return Start(model, spec, typed, strategy, started)


def train_model(
    task,
    frame,
    spec: FeatureSpec,
    hparams: dict[str, Any],
    params,
    on_epoch: Callable[[Epoch], None] | None = None,
    checkpoint: Path | None = None,
    source=None,
) -> tuple[TrainResult, FeatureSpec]:
    """Train the final model with the chosen hyperparameters; return it with its spec.

    With `checkpoint`, training resumes from the last epoch saved there (see `fit`); with
    `source`, it starts from that model (`initial_model`)."""
    start = initial_model(task, spec, hparams, params, source)
    spec = start.spec
    train = task.examples(frame, spec, "train")
    val = task.examples(frame, spec, "val")
    result = fit(
        start.model,
        train,
        val,
        spec,
        start.hparams,
        params.train,
        params.seed,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
        fine_tuning=start.fine_tuning,
        augment=task.augmentation(spec),
    )
    result.started = start.started
    return result, spec


def save_checkpoint(result: TrainResult, spec: FeatureSpec, path: Path) -> Path:
    """Weights, hyperparameters and feature spec: enough to rebuild the model."""
    torch.save(
        {
            "state_dict": result.model.state_dict(),
            "hparams": result.hparams,
            "feature_spec": spec.to_json(),
        },
        path,
    )
    return path


def load_checkpoint(task, path: Path) -> tuple[nn.Module, FeatureSpec]:
    checkpoint = torch.load(path, weights_only=True)
    spec = FeatureSpec.from_json(checkpoint["feature_spec"])
    model = task.build_model(task.Hyperparameters.from_dict(checkpoint["hparams"]), spec)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), spec


PLACEMENT_TAG = "loopline.train.placement"  # where a training group's processes ran


def record_training(
    tracker: RunTracker,
    result: TrainResult,
    spec: FeatureSpec,
    folder: Path,
    title: str,
    transfer_mode: str,
) -> None:
    """What the pipeline run shows of its training, whether it trained now or reused a
    training with the same key from an earlier run: curves, summary, weights, provenance."""
    if not tracker.client.get_metric_history(tracker.run_id, "train_loss"):
        for epoch in result.history:  # reused: the epochs were logged to another run
            record_epoch(tracker, epoch)
    if result.started is not None:
        tracker.set_tags(transfer_tags(result.started, transfer_mode))
    tracker.log_metrics(training_summary(result))
    if result.placement:
        tracker.set_tags({PLACEMENT_TAG: ", ".join(result.placement)})
    tracker.log_figure_file(plot_learning_curves(result, folder / "learning_curves.png", title))
    # The PyTorch weights travel with every run: parity can be re-checked and later runs
    # can start from them (`train.init_from`).
    tracker.log_file(save_checkpoint(result, spec, folder / "model.pt"), "torch")
