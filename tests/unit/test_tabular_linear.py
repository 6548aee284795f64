"""The tabular family's linear candidate (`loopline.tasks.tabular.model.Linear`): logistic
or ridge regression that fits and exports itself like the trees, chosen by tuning when the
data is linear; hyperparameters saved before it existed still load."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from loopline.config import Dimension, ExportParams, TrainParams, TuneParams
from loopline.offline.export import ExportsItself, export_and_check
from loopline.offline.train import (
    FitsItself,
    load_checkpoint,
    predict,
    save_checkpoint,
    train_model,
)
from loopline.onnx_runtime import onnx_session, run_onnx
from loopline.params import parse_params
from loopline.tasks.tabular.model import Linear

SPLITS = ["train"] * 80 + ["val"] * 20 + ["test"] * 20
HP = {
    "algorithm": "linear",
    "hidden_size": 8,
    "layers": 1,
    "dropout": 0.0,
    "learning_rate": 0.01,
    "batch_size": 32,
    "trees": 20,
    "depth": 2,
    "shrinkage": 0.1,
    "inverse_regularization": 10.0,
}


def table(kind: str, seed: int = 0) -> pd.DataFrame:
    """Rows whose target is a line of the features: a number, or 2 or 3 bands of it."""
    rng, n = np.random.default_rng(seed), len(SPLITS)
    a, b = rng.normal(size=n), rng.normal(size=n)
    plan = rng.choice(["basic", "pro"], n)
    score = 3 * a - 2 * b + np.where(plan == "pro", 1.5, 0.0)
    if kind == "regression":
        target = 10 + score + rng.normal(scale=0.1, size=n)
    elif kind == "two":
        target = np.where(score > 0, "yes", "no")
    else:
        target = np.select([score < -1.5, score < 1.5], ["low", "mid"], "high")
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "a": a, "b": b, "plan": plan, "y": target}
    ).assign(split=SPLITS)


def prepared(kind: str):
    section = {
        "target": "y",
        "id_column": "id",
        "numeric": ["a", "b"],
        "categorical": ["plan"],
        "kind": "regression" if kind == "regression" else "classification",
    }
    p = parse_params({"task": "tabular", "tabular": section})
    task, frame = p.plugin, table(kind)
    spec = task.fit_features(task.new_feature_spec(p), frame[frame["split"] == "train"])
    return task, frame, spec


def run_params(space: dict[str, Dimension] | None = None, n_trials: int = 1) -> SimpleNamespace:
    space = space or {k: Dimension(choices=[v]) for k, v in HP.items()}
    tune = TuneParams(sampler="grid", n_trials=n_trials, max_epochs=2, search_space=space)
    return SimpleNamespace(tune=tune, train=TrainParams(max_epochs=2, threads=1), seed=0)


@pytest.mark.parametrize(("kind", "width"), [("two", 2), ("three", 3), ("regression", 1)])
def test_the_linear_model_fits_itself_and_exports_with_parity(kind, width, tmp_path):
    task, frame, spec = prepared(kind)
    result, spec = train_model(task, frame, spec, HP, run_params())
    model = result.model
    assert isinstance(model, Linear)
    assert isinstance(model, FitsItself) and isinstance(model, ExportsItself)
    assert len(result.history) == 1 and np.isfinite(result.best_val_loss)
    golden = task.examples(frame, spec, "val").x
    settings = ExportParams()
    parity = export_and_check(
        model, golden, tmp_path / "m.onnx", {}, settings.parity_atol, settings.parity_rtol
    )
    assert parity.passed and parity.max_abs_diff < 1e-4
    x = task.examples(frame, spec, "test").x
    served = run_onnx(onnx_session(tmp_path / "m.onnx"), x)
    assert served.shape == (len(x), width)
    np.testing.assert_allclose(served, predict(model, x), atol=1e-4, rtol=1e-4)
    truth = task.examples(frame, spec, "test").y
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    if kind == "regression":  # the target in its units served; forward gives it scaled
        assert np.abs(served[:, 0] - truth.ravel()).max() < 0.5
        scaled = (served - spec.target_mean) / spec.target_std
        np.testing.assert_allclose(out.numpy(), scaled, atol=1e-4)
    else:  # probabilities served, log-probabilities from forward (as the trees')
        np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
        assert (served.argmax(axis=1) == truth).mean() >= 0.9
        np.testing.assert_allclose(out.exp().numpy(), served, atol=1e-4)


def test_its_checkpoint_state_round_trips(tmp_path):
    task, frame, spec = prepared("three")
    result, spec = train_model(task, frame, spec, HP, run_params())
    path = save_checkpoint(result, spec, tmp_path / "model.pt")
    torch.load(path, weights_only=True)  # the pickled estimator is a plain uint8 tensor
    model, loaded_spec = load_checkpoint(task, path)
    assert isinstance(model, Linear) and loaded_spec == spec
    assert model.inverse_regularization == HP["inverse_regularization"]
    x = task.examples(frame, spec, "val").x
    np.testing.assert_array_equal(predict(model, x), predict(result.model, x))


def test_hyperparameters_saved_before_the_linear_model_still_load():
    task, _frame, _spec = prepared("two")
    old = {k: v for k, v in HP.items() if k != "inverse_regularization"}
    typed = task.Hyperparameters.from_dict({**old, "algorithm": "gbm"})
    assert typed.algorithm == "gbm" and typed.inverse_regularization == 1.0
    with pytest.raises(ValueError, match="unknown"):
        task.Hyperparameters.from_dict({**HP, "leaves": 3})
    assert "linear" in task.default_space()["algorithm"].choices
    assert "inverse_regularization" in task.default_space()


def test_the_regularization_sets_the_penalty():
    assert Linear(1, False, 4.0).regressor(0).alpha == 0.25
    assert Linear(2, True, 4.0).classifier(0).C == 4.0
    with pytest.raises(ValueError, match="inverse_regularization"):
        Linear(2, True, 0.0)


def test_tuning_that_includes_linear_chooses_it_on_linearly_separable_rows():
    from loopline.offline.tune import tune_model

    task, frame, spec = prepared("two")
    space = {k: Dimension(choices=[v]) for k, v in HP.items()}
    space["algorithm"] = Dimension(choices=["mlp", "gbm", "linear"])
    space["inverse_regularization"] = Dimension(choices=[100.0])
    tuned = tune_model(task, frame, spec, run_params(space, n_trials=3))
    losses = {t.hparams["algorithm"]: t.value for t in tuned.trials}
    assert set(losses) == {"mlp", "gbm", "linear"}
    assert all(np.isfinite(v) for v in losses.values())
    # One scale for all three (validation log loss): the line wins on rows a line separates.
    assert tuned.best_hparams["algorithm"] == "linear", losses
