"""The self-fitting contract (`train.FitsItself`, `export.ExportsItself`): a model that
trains and exports itself (here scikit-learn's Ridge) goes through the shared train, tune,
checkpoint and export path beside a gradient-trained one, each trial choosing which."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from loopline import tasks
from loopline.config import Dimension, TrainParams, TuneParams
from loopline.offline.export import ExportsItself, export_model
from loopline.offline.train import (
    FitsItself,
    load_checkpoint,
    pickled_state,
    predict,
    save_checkpoint,
    train_model,
    unpickled_state,
)
from loopline.offline.tune import tune_model
from loopline.onnx_runtime import INPUT_NAME, onnx_session, run_onnx
from loopline.tasks.rows import RowTask
from loopline.tasks.rows.task import RowHyperparameters


class RidgeModule(nn.Module):
    """Ridge regression on the scaled target, fitted by scikit-learn, exported by skl2onnx."""

    def __init__(self, target_mean: float, target_std: float) -> None:
        super().__init__()
        self.estimator = None
        self.mean, self.std = target_mean, target_std

    def fit_examples(self, x_train, y_train, x_val, y_val, seed) -> None:
        from sklearn.linear_model import Ridge

        self.estimator = Ridge(alpha=1.0).fit(x_train.numpy(), y_train.numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.estimator.predict(x.numpy().astype(np.float64)).reshape(len(x), -1)
        return torch.from_numpy(out.astype(np.float32))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x) * self.std + self.mean

    def get_extra_state(self):
        return pickled_state(self.estimator)

    def set_extra_state(self, state) -> None:
        self.estimator = unpickled_state(state)

    def exportable(self):
        return _Served(self), {}, ["value"]

    def onnx_model(self, example: np.ndarray):
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        n = example.shape[1]
        model = convert_sklearn(
            self.estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, n]))]
        )
        # The served value is in target units: scale the Ridge's output back in the graph.
        from onnx import helper, numpy_helper

        graph = model.graph
        inner = graph.output[0].name
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([self.std], np.float32), "std"),
                numpy_helper.from_array(np.array([self.mean], np.float32), "mean"),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Mul", [inner, "std"], ["scaled"]),
                helper.make_node("Add", ["scaled", "mean"], ["value"]),
            ]
        )
        out = helper.make_tensor_value_info("value", 1, [None, 1])
        del graph.output[:]
        graph.output.append(out)
        return model


class _Served(nn.Module):
    def __init__(self, model: RidgeModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


@dataclass(frozen=True, kw_only=True)
class ChoosingHyperparameters(RowHyperparameters):
    algorithm: Literal["mlp", "ridge"]


class Sizes(RowTask):
    name = "sizes"
    features = ("a", "b")
    target = "y"
    Hyperparameters = ChoosingHyperparameters

    def build_model(self, hparams, spec):
        if hparams.algorithm == "ridge":
            return RidgeModule(spec.target_mean, spec.target_std)
        return super().build_model(hparams, spec)


HP = {
    "hidden_size": 8,
    "layers": 1,
    "dropout": 0.0,
    "learning_rate": 0.01,
    "batch_size": 32,
    "algorithm": "ridge",
}


def params(n_trials: int = 2) -> SimpleNamespace:
    space = {k: Dimension(choices=[v]) for k, v in HP.items()}
    space["algorithm"] = Dimension(choices=["mlp", "ridge"])
    tune = TuneParams(sampler="grid", n_trials=n_trials, max_epochs=2, search_space=space)
    return SimpleNamespace(tune=tune, train=TrainParams(max_epochs=2, threads=1), seed=0)


@pytest.fixture(scope="module")
def prepared():
    rng = np.random.default_rng(0)
    n = 120
    a, b = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "a": a,
            "b": b,
            "y": 3 * a - 2 * b + 10 + rng.normal(scale=0.1, size=n),
            "split": ["train"] * 80 + ["val"] * 20 + ["test"] * 20,
        }
    )
    task = Sizes()
    spec = task.new_feature_spec(SimpleNamespace(task_params=task.Settings()))
    spec = task.fit_features(spec, frame[frame["split"] == "train"])
    loaded = tasks._LOADED
    loaded[task.name] = task  # as `task: ...` in params.yaml loads it: a spec can name it
    yield task, frame, spec
    loaded.pop(task.name, None)


def test_a_self_fitting_model_trains_in_one_step_and_scores_like_any_model(prepared):
    task, frame, spec = prepared
    seen = []
    result, spec = train_model(task, frame, spec, HP, params(), on_epoch=seen.append)
    assert isinstance(result.model, FitsItself) and isinstance(result.model, ExportsItself)
    assert len(result.history) == 1 and seen == result.history
    # A near-linear target: the ridge's validation MSE (scaled target) is almost nothing.
    assert result.best_val_loss < 0.01
    x = task.examples(frame, spec, "test").x
    truth = task.examples(frame, spec, "test").y
    assert np.abs(predict(result.model, x) - truth).max() < 0.5


def test_its_state_travels_in_a_weights_only_checkpoint(prepared, tmp_path):
    task, frame, spec = prepared
    result, spec = train_model(task, frame, spec, HP, params())
    path = save_checkpoint(result, spec, tmp_path / "model.pt")
    torch.load(path, weights_only=True)  # the pickled estimator is a plain uint8 tensor
    model, loaded_spec = load_checkpoint(task, path)
    x = task.examples(frame, spec, "val").x
    assert loaded_spec == spec
    np.testing.assert_array_equal(predict(model, x), predict(result.model, x))


def test_it_exports_itself_and_passes_the_parity_check(prepared, tmp_path):
    task, frame, spec = prepared
    result, spec = train_model(task, frame, spec, HP, params())
    settings = SimpleNamespace(golden_batch=16, parity_atol=1e-4, parity_rtol=1e-4)
    exported = export_model(task, frame, spec, result.model, settings, tmp_path)
    assert exported.parity.passed and exported.parity.max_abs_diff < 1e-4
    session = onnx_session(exported.onnx_model)
    x = task.examples(frame, spec, "test").x
    np.testing.assert_allclose(run_onnx(session, x), predict(result.model, x), rtol=1e-4)


def test_tuning_chooses_the_algorithm_per_trial(prepared):
    task, frame, spec = prepared
    tuned = tune_model(task, frame, spec, params())
    kinds = {t.hparams["algorithm"]: t.value for t in tuned.trials}
    assert set(kinds) == {"mlp", "ridge"} and all(np.isfinite(v) for v in kinds.values())
    # Both are scored on one scale (validation MSE of the scaled target): the exact linear
    # fit wins against a two-epoch MLP.
    assert tuned.best_hparams["algorithm"] == "ridge"


def test_a_self_fitting_model_cannot_start_from_another(prepared, tmp_path):
    from loopline.offline.train import initial_model
    from loopline.offline.transfer import SourceModel

    task, _frame, spec = prepared
    source = SourceModel("run", "run", tmp_path / "model.pt", {}, HP, spec)
    with pytest.raises(ValueError, match=r"fits itself: train\.init_from"):
        initial_model(task, spec, HP, params(), source=source)
