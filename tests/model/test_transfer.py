"""Transfer learning as a training option (`loopline.offline.transfer`): which weights are copied,
which head is fresh, and what each fine-tuning strategy lets learn."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from loopline.config import TrainParams
from loopline.offline.labeling import Examples
from loopline.offline.train import fit, initial_model, save_checkpoint
from loopline.offline.transfer import (
    Freeze,
    GradualUnfreeze,
    group_names,
    layer_groups,
    load_source,
    make_strategy,
    read_checkpoint,
    start_from,
)
from loopline.params import parse_params
from loopline.tasks.digits.task import DigitsTask
from loopline.tasks.image.model import ImageClassifier
from loopline.tasks.image.task import ImageHyperparameters as DigitsHyperparameters

HPARAMS = {
    "channels": 4,
    "hidden_size": 16,
    "dropout": 0.0,
    "learning_rate": 1e-2,
    "batch_size": 16,
}


def _spec(labels: list[str]):
    task = DigitsTask()
    spec = task.new_feature_spec(parse_params({"task": "digits"}))
    return replace(spec, labels=labels, options=replace(spec.options, augment={}))


def _source(tmp_path, labels: list[str], hparams=HPARAMS):
    """A trained-looking source model, saved as a pipeline run saves it."""
    torch.manual_seed(1)
    model = ImageClassifier(len(labels), 8, channels=hparams["channels"], hidden_size=16)
    result = type("R", (), {"model": model, "hparams": hparams})()
    path = save_checkpoint(result, _spec(labels), tmp_path / "model.pt")
    return model, read_checkpoint(path, "test", "test")


def _examples(n: int, classes: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.2
    for i, label in enumerate(y):  # a bright row per class: learnable in a few epochs
        x[i, 0, label] += 0.8
    return Examples(x, y, None)


def test_groups_cover_every_parameter_top_first():
    model = ImageClassifier(10, 8, channels=4, hidden_size=16)
    assert group_names(model) == ["head", "features.1", "features.0"]
    total = sum(len(p) for _, p in layer_groups(model))
    assert total == len(list(model.parameters()))


def test_a_new_label_set_gets_a_fresh_head_and_the_features_are_copied(tmp_path):
    source_model, source = _source(tmp_path, [str(d) for d in range(5)])
    params = parse_params({"task": "digits", "seed": 3})
    start = initial_model(DigitsTask(), _spec(["5", "6", "7", "8", "9"]), HPARAMS, params, source)
    assert start.started.copied == ["features.1", "features.0"]
    assert start.started.fresh == ["head"] and "labels" in start.started.reason
    own, theirs = start.model.state_dict(), source_model.state_dict()
    for key in theirs:
        if key.startswith("features."):
            assert torch.equal(own[key], theirs[key]), key
    # The head is the seeded fresh one, sized for the new labels, not the source's.
    assert not torch.equal(own["head.5.weight"], theirs["head.5.weight"])


def test_the_same_label_set_keeps_the_head_too(tmp_path):
    labels = [str(d) for d in range(10)]
    source_model, source = _source(tmp_path, labels)
    model = ImageClassifier(10, 8, channels=4, hidden_size=16)
    started = start_from(model, source, _spec(labels))
    assert started.fresh == [] and started.copied == ["head", "features.1", "features.0"]
    assert all(torch.equal(v, source_model.state_dict()[k]) for k, v in model.state_dict().items())


def test_the_source_shape_wins_over_the_tuned_one(tmp_path):
    _, source = _source(tmp_path, ["0", "1"])
    params = parse_params({"task": "digits"})
    tuned = {**HPARAMS, "channels": 32, "learning_rate": 5e-3}  # a search proposing 32
    start = initial_model(DigitsTask(), _spec(["0", "1"]), tuned, params, source)
    assert start.hparams.channels == 4  # the copied weights' shape
    assert start.hparams.learning_rate == 5e-3  # training knobs stay tuned


def test_a_shape_mismatch_names_the_layer(tmp_path):
    _, source = _source(tmp_path, ["0", "1"])
    wider = ImageClassifier(2, 8, channels=8, hidden_size=16)
    expected = r"features\.0\.0\.weight is \(4, 1, 3, 3\) there, \(8, 1, 3, 3\) here"
    with pytest.raises(ValueError, match=expected):
        start_from(wider, source, _spec(["0", "1"]))


def test_another_tasks_model_is_refused(tmp_path):
    _, source = _source(tmp_path, ["0", "1"])
    source = replace(source, spec=replace(source.spec, task="solar"))
    with pytest.raises(ValueError, match="is a solar model; this run's task is digits"):
        initial_model(
            DigitsTask(), _spec(["0", "1"]), HPARAMS, parse_params({"task": "digits"}), source
        )


def test_freeze_keeps_named_groups_and_their_batch_norm_statistics(tmp_path):
    _, source = _source(tmp_path, ["0", "1", "2"])
    model = ImageClassifier(3, 8, channels=4, hidden_size=16)
    start_from(model, source, _spec(["0", "1", "2"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(
        model,
        _examples(96, 3, 0),
        _examples(32, 3, 1),
        _spec(["0", "1", "2"]),
        DigitsHyperparameters.from_dict(HPARAMS),
        TrainParams(max_epochs=2, patience=5),
        seed=0,
        fine_tuning=make_strategy("freeze", freeze=["features.0"]),
    )
    after = result.model.state_dict()
    frozen = [k for k in before if k.startswith("features.0.")]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:  # weights and batch-norm statistics alike
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["features.1.0.weight"], before["features.1.0.weight"])
    assert not torch.equal(after["head.5.weight"], before["head.5.weight"])


def test_default_freeze_is_everything_below_the_head_and_names_are_checked():
    model = ImageClassifier(3, 8, channels=4, hidden_size=16)
    Freeze().before_epoch(model, 1)
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(p.requires_grad for p in model.features.parameters())
    with pytest.raises(ValueError, match=r"\['conv9'\].*groups are \['head', 'features.1'"):
        make_strategy("freeze", freeze=["conv9"]).param_groups(model, 1e-3)


def test_gradual_unfreeze_thaws_one_group_per_period_from_the_top():
    model = ImageClassifier(3, 8, channels=4, hidden_size=16)
    schedule = GradualUnfreeze(every=2)
    thawed = []
    for epoch in range(1, 7):
        schedule.before_epoch(model, epoch)
        thawed.append([name for name, params in layer_groups(model) if params[0].requires_grad])
    assert thawed[0] == thawed[1] == ["head"]
    assert thawed[2] == thawed[3] == ["head", "features.1"]
    assert thawed[4] == ["head", "features.1", "features.0"]


def test_discriminative_rates_fall_going_down():
    model = ImageClassifier(3, 8, channels=4, hidden_size=16)
    groups = make_strategy("discriminative_lr", decay=4.0).param_groups(model, 1e-2)
    assert [g["name"] for g in groups] == ["head", "features.1", "features.0"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 2.5e-3, 6.25e-4])


def test_a_relative_checkpoint_path_is_the_projects(tmp_path):
    _source(tmp_path, ["0", "1"])  # writes tmp_path / "model.pt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    source = load_source("model.pt", uri, tmp_path / "d", root=tmp_path)
    assert source.resolved.startswith(f"{tmp_path / 'model.pt'} (sha256 ")
    assert source.labels == ["0", "1"]


def test_references_that_lead_nowhere_say_so(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match="is not a file, a models:/ reference"):
        load_source(str(tmp_path / "nope.pt"), uri, tmp_path / "d")
    with pytest.raises(ValueError, match="no such model version"):
        load_source("models:/digits@champion", uri, tmp_path / "d")
    with pytest.raises(ValueError, match="name a version"):
        load_source("models:/digits", uri, tmp_path / "d")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_source(str(tmp_path / "junk.pt"), uri, tmp_path / "d")


def test_tuning_from_a_source_searches_only_the_training_knobs(tmp_path):
    from loopline.offline.tune import search_for

    _, source = _source(tmp_path, ["0", "1"])
    tune = parse_params({"task": "digits"}).tune
    space = search_for(tune, DigitsTask(), source).search_space
    assert space["channels"].choices == [4] and space["hidden_size"].choices == [16]
    assert space["learning_rate"] == tune.search_space["learning_rate"]
    assert search_for(tune, "digits", None) is tune


def test_freezing_a_fresh_head_is_refused(tmp_path):
    _, source = _source(tmp_path, ["0", "1"])
    params = parse_params(
        {"task": "digits", "train": {"transfer": {"mode": "freeze", "freeze": ["head"]}}}
    )
    with pytest.raises(ValueError, match=r"freeze holds \['head'\], which start fresh"):
        initial_model(DigitsTask(), _spec(["5", "6"]), HPARAMS, params, source)
