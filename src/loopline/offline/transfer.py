"""Transfer learning: start a model from another one's weights and fine-tune it (notes, ch. 7).

Any task's training can start from a trained model (`train.init_from`): a registered version
(`models:/<name>@champion`, `models:/<name>/3`), a pipeline run (`runs:/<run id>`, whose
`torch/model.pt` every run logs) or a checkpoint file. `load_source` fetches it;
`start_from` copies every layer whose name and shape match into the new model and leaves the
head fresh when the label set changed, so the new head is sized for the new labels.

How the copied layers then learn is `train.transfer.mode`, ULMFiT's strategies over the
model's `layer_groups()` (top group first, the one closest to the output):

- `none`: every layer trains at one learning rate;
- `freeze`: the named groups (default: every group below the head) keep their weights;
- `gradual_unfreeze`: the head trains alone first, then one more group thaws from the top
  down every `unfreeze_every` epochs, so a random head settles before its gradients reach
  (and disturb) the transferred layers;
- `discriminative_lr`: all train, group `d` below the top at `lr / lr_decay**d`: lower
  layers hold general features (strokes, syllables) that need only a nudge.

Each strategy implements `train.FineTuning`, so `fit` runs it and a resumed fit picks up
the same schedule (it depends on the epoch number only). A task that pretrains its own
encoder (the `Pretraining` ability) fine-tunes it with these same strategies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from loopline.offline.features import FeatureSpec
from loopline.registry import client

TransferMode = Literal["none", "freeze", "gradual_unfreeze", "discriminative_lr"]
TRANSFER_MODES: tuple[str, ...] = ("none", "freeze", "gradual_unfreeze", "discriminative_lr")
CHECKPOINT_ARTIFACT = "torch/model.pt"  # what every pipeline run logs (train stage)

Groups = list[tuple[str, list[nn.Parameter]]]


# --- layer groups ---------------------------------------------------------------------------


def layer_groups(model: nn.Module) -> Groups:
    """The model's parameters by layer group, top (output side) first, from its
    `layer_groups()`; every parameter must be in exactly one group."""
    if not hasattr(model, "layer_groups"):
        raise TypeError(f"{type(model).__name__} has no layer_groups(): it cannot be fine-tuned")
    groups = [
        (name, [p for module in modules for p in module.parameters()])
        for name, modules in model.layer_groups()
    ]
    seen: dict[int, str] = {}
    for name, params in groups:
        for p in params:
            if id(p) in seen:
                raise TypeError(f"a parameter is in both groups {seen[id(p)]!r} and {name!r}")
            seen[id(p)] = name
    left = [n for n, p in model.named_parameters() if id(p) not in seen]
    if left:
        # A layer added to a model must be placed in a group on purpose.
        raise TypeError(f"parameters in no fine-tuning group: {left}")
    return groups


def group_names(model: nn.Module) -> list[str]:
    return [name for name, _ in layer_groups(model)]


def _set_trainable(groups: Groups, frozen: set[str]) -> None:
    for name, params in groups:
        for p in params:
            p.requires_grad_(name not in frozen)


def _one_rate(model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
    # Frozen parameters stay in the optimizer: with no gradient, AdamW skips them (weight
    # decay included), and a group thawed later needs no new optimizer.
    return [{"params": list(model.parameters()), "lr": learning_rate}]


def _thaw_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


# --- strategies (train.FineTuning) ----------------------------------------------------------


class TrainAll:
    """`none`: every layer trains at one learning rate (what `fit` does with no strategy)."""

    mode = "none"

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
        return _one_rate(model, learning_rate)

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        _thaw_all(model)


@dataclass
class Freeze:
    """`freeze`: the groups in `groups` keep their weights (default: all but the top one,
    a linear probe of the transferred features)."""

    groups: tuple[str, ...] = ()
    mode: str = "freeze"

    def frozen(self, model: nn.Module, names: list[str] | None = None) -> set[str]:
        names = group_names(model) if names is None else names
        if not self.groups:
            return set(names[1:])
        unknown = sorted(set(self.groups) - set(names))
        if unknown:
            raise ValueError(
                f"train.transfer.freeze names {unknown}, not layer groups of "
                f"{type(model).__name__}; its groups are {names}"
            )
        return set(self.groups)

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
        self.frozen(model)  # a wrong name fails before the first epoch
        return _one_rate(model, learning_rate)

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        groups = layer_groups(model)
        _set_trainable(groups, self.frozen(model, [name for name, _ in groups]))


@dataclass
class GradualUnfreeze:
    """`gradual_unfreeze`: the top group alone for `every` epochs, then one more group
    thaws from the top down each `every` epochs."""

    every: int = 1
    mode: str = "gradual_unfreeze"

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"unfreeze every >= 1 epochs, got {self.every}")

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
        return _one_rate(model, learning_rate)

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        groups = layer_groups(model)
        trainable = 1 + (epoch - 1) // self.every
        _set_trainable(groups, {name for name, _ in groups[trainable:]})


@dataclass
class DiscriminativeLR:
    """`discriminative_lr`: every group trains, group `d` below the top at
    `learning_rate / decay**d`."""

    decay: float = 2.6
    mode: str = "discriminative_lr"

    def __post_init__(self) -> None:
        if self.decay < 1.0:
            raise ValueError(f"decay must be >= 1 (lower layers slower), got {self.decay}")

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
        return [
            {"params": params, "lr": learning_rate / self.decay**depth, "name": name}
            for depth, (name, params) in enumerate(layer_groups(model))
        ]

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        _thaw_all(model)


Strategy = TrainAll | Freeze | GradualUnfreeze | DiscriminativeLR


def make_strategy(
    mode: str,
    decay: float = 2.6,
    unfreeze_every: int = 1,
    freeze: tuple[str, ...] | list[str] = (),
) -> Strategy:
    """The fine-tuning strategy `mode` (one of TRANSFER_MODES), for `train.fit`."""
    if mode == "none":
        return TrainAll()
    if mode == "freeze":
        return Freeze(groups=tuple(freeze))
    if mode == "gradual_unfreeze":
        return GradualUnfreeze(every=unfreeze_every)
    if mode == "discriminative_lr":
        return DiscriminativeLR(decay=decay)
    raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {TRANSFER_MODES}")


def strategy_from(section) -> Strategy:
    """The strategy a `train.transfer` section asks for."""
    return make_strategy(
        section.mode, section.lr_decay, section.unfreeze_every, tuple(section.freeze)
    )


# --- the model to start from ----------------------------------------------------------------


@dataclass(frozen=True)
class SourceModel:
    """A trained model to start from: its weights, hyperparameters and feature spec, and
    where it came from (`resolved` pins a moving reference such as an alias)."""

    reference: str
    resolved: str
    path: Path  # the local checkpoint file (a Dask tuning worker reads it again)
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    hparams: dict[str, Any]
    spec: FeatureSpec

    def locator(self) -> tuple[str, str, str]:
        """Plain strings that `reopen` turns back into this source, in another process."""
        return str(self.path), self.reference, self.resolved

    @property
    def labels(self) -> list[str] | None:
        return self.spec.labels


def read_checkpoint(path: Path, reference: str, resolved: str) -> SourceModel:
    """A checkpoint written by `train.save_checkpoint`."""
    try:
        checkpoint = torch.load(path, weights_only=True)
    except Exception as error:  # any unreadable file gets the same message
        raise ValueError(f"train.init_from {reference!r}: cannot read {path}: {error}") from None
    missing = {"state_dict", "hparams", "feature_spec"} - set(checkpoint)
    if missing:
        raise ValueError(
            f"train.init_from {reference!r}: {path} is not a Loopline checkpoint "
            f"(no {sorted(missing)})"
        )
    return SourceModel(
        reference=reference,
        resolved=resolved,
        path=path,
        state_dict=checkpoint["state_dict"],
        hparams=dict(checkpoint["hparams"]),
        spec=FeatureSpec.from_json(checkpoint["feature_spec"]),
    )


def reopen(locator: tuple[str, str, str] | list[str]) -> SourceModel:
    path, reference, resolved = locator
    return read_checkpoint(Path(path), reference, resolved)


def _run_of(reference: str, tracking_uri: str) -> tuple[str, str]:
    """(run id, pinned reference) behind `models:/name@alias`, `models:/name/N` or
    `runs:/<id>[/...]`."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    if reference.startswith("runs:/"):
        run_id = reference.removeprefix("runs:/").split("/")[0]
        if not run_id:
            raise ValueError(f"train.init_from {reference!r}: no run id after runs:/")
        return run_id, f"runs:/{run_id}"
    body = reference.removeprefix("models:/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            version = mlflow_client.get_model_version_by_alias(name, alias)
        elif "/" in body:
            name, number = body.rsplit("/", 1)
            version = mlflow_client.get_model_version(name, number)
        else:
            raise ValueError(
                f"train.init_from {reference!r}: name a version (models:/{body}/3) or an "
                f"alias (models:/{body}@champion)"
            )
    except MlflowException as error:
        raise ValueError(
            f"train.init_from {reference!r}: no such model version in {tracking_uri} "
            f"({error.message})"
        ) from None
    if not version.run_id:
        raise ValueError(f"train.init_from {reference!r}: the version has no run to read from")
    return version.run_id, f"models:/{version.name}/{version.version} (run {version.run_id})"


def load_source(
    reference: str, tracking_uri: str, dest: Path, root: Path | None = None
) -> SourceModel:
    """The model `reference` names: a registry reference, a run or a checkpoint file (a
    relative path is relative to `root`, the project, like every path in params)."""
    if not reference.startswith(("models:/", "runs:/")):
        path = Path(reference).expanduser()
        if root is not None and not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise ValueError(
                f"train.init_from {reference!r} is not a file, a models:/ reference or a "
                "runs:/ reference"
            )

        # The content, not just the name, pins a file: a rewritten file means new cache keys.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return read_checkpoint(path, reference, f"{path.resolve()} (sha256 {digest})")
    from mlflow.exceptions import MlflowException

    run_id, resolved = _run_of(reference, tracking_uri)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = client(tracking_uri).download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(dest))
    except (MlflowException, OSError) as error:
        raise ValueError(
            f"train.init_from {reference!r}: run {run_id} has no {CHECKPOINT_ARTIFACT} "
            f"(only pipeline runs log their PyTorch weights): {error}"
        ) from None
    return read_checkpoint(Path(local), reference, resolved)


# --- starting a new model from it -----------------------------------------------------------


def fixed_hparams(
    hparams: dict[str, Any], source: SourceModel, architecture: tuple[str, ...]
) -> dict[str, Any]:
    """`hparams` with the source's shape: architecture keys (sizes, layers) come from the
    model the weights were learned in; the rest (learning rate, batch, dropout) stay."""
    missing = [k for k in architecture if k not in source.hparams]
    if missing:
        raise ValueError(
            f"train.init_from {source.reference!r}: its hyperparameters lack {missing}; "
            "was it trained for another task?"
        )
    return {**hparams, **{k: source.hparams[k] for k in architecture}}


def check_task(source: SourceModel, task: str) -> None:
    if source.spec.task != task:
        raise ValueError(
            f"train.init_from {source.reference!r} is a {source.spec.task} model; this run's "
            f"task is {task}"
        )


@dataclass(frozen=True)
class Started:
    """What `start_from` did: the layer groups copied, and the ones left freshly
    initialised (the new head, when the label set changed)."""

    copied: list[str]
    fresh: list[str]
    reason: str = ""


def start_from(model: nn.Module, source: SourceModel, spec: FeatureSpec) -> Started:
    """Copy the source's weights into `model` in place, group by group.

    Every group must match the source in names and shapes, except the top group (the
    head) when the label set changed: that one keeps its fresh initialisation, sized for
    the new labels."""
    layer_groups(model)  # every parameter in a group: none is left uncopied unnoticed
    groups = model.layer_groups()
    head = groups[0][0]
    new_labels = spec.labels
    reason = ""
    if new_labels is not None and source.labels is not None and source.labels != new_labels:
        reason = f"labels {source.labels} → {new_labels}"
    own = model.state_dict()
    copied, fresh, pairs, problems = [], [], [], []
    for name, modules in groups:
        if reason and name == head:
            fresh.append(name)
            continue
        for module in modules:
            prefix = _prefix(model, module)
            for key in module.state_dict():
                full = prefix + key
                theirs = source.state_dict.get(full)
                if theirs is None:
                    problems.append(f"{full} is missing there")
                elif theirs.shape != own[full].shape:
                    problems.append(
                        f"{full} is {tuple(theirs.shape)} there, {tuple(own[full].shape)} here"
                    )
                else:
                    pairs.append((own[full], theirs))
        copied.append(name)
    if problems:
        raise ValueError(
            f"train.init_from {source.reference!r} does not fit this model (another "
            f"architecture, input size or vocabulary?): {'; '.join(problems)}"
        )
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)  # state_dict tensors share storage with the parameters
    # Buffers outside any group (say, a regressor's target scale) belong to the new spec.
    return Started(copied, fresh, reason)


def _prefix(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def inherit_spec(spec: FeatureSpec, source: SourceModel, keys: tuple[str, ...]) -> FeatureSpec:
    """`spec` reading inputs the way the source model learned to: each of `keys` (a spec
    field such as `mean`, or an option such as `vocabulary`) is the source's, not the one
    fitted on this data: the copied weights expect those inputs."""
    fields, options = {}, {}
    for key in keys:
        if key != "options" and hasattr(spec, key):
            fields[key] = getattr(source.spec, key)
        elif hasattr(source.spec.options, key):
            options[key] = getattr(source.spec.options, key)
    return replace(spec, options=replace(spec.options, **options), **fields)
