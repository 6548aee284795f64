"""The tabular candidates beside the MLP (`loopline.tasks.rows.model.RowMLP`): scikit-learn's
gradient-boosted trees, which fit and export themselves (`train.FitsItself`,
`export.ExportsItself`), and the linear baseline.

`GradientBoosted` is an `nn.Module` so the shared path (checkpoints, `predict`, the parity
check) treats it like any model: `forward` runs the trees on NumPy and gives what the MLP's
gives (log-probabilities, or the scaled target), so `train.fit` scores both on one loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from loopline.export import INPUT_NAME
from loopline.train import pickled_state, unpickled_state


class GradientBoosted(nn.Module):
    """GradientBoostingClassifier / Regressor (skl2onnx converts these; the histogram-based
    ones it cannot, with scikit-learn 1.9)."""

    def __init__(
        self,
        n_outputs: int,
        classify: bool,
        trees: int,
        depth: int,
        shrinkage: float,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_outputs, self.classify = n_outputs, classify
        self.trees, self.depth, self.shrinkage = trees, depth, shrinkage
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.estimator = None

    # ------------------------------------------------------------------ train.FitsItself

    def fit_examples(self, x_train, y_train, x_val, y_val, seed: int) -> None:
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        settings = {
            "n_estimators": self.trees,
            "max_depth": self.depth,
            "learning_rate": self.shrinkage,
            "random_state": seed,
        }
        x, y = x_train.numpy(), y_train.numpy()
        if self.classify:
            missing = sorted(set(range(self.n_outputs)) - set(y.tolist()))
            if missing:
                raise ValueError(f"class id(s) {missing} have no training row: cannot fit trees")
            self.estimator = GradientBoostingClassifier(**settings).fit(x, y)
        else:
            # Trees learn the target in its own units: the ONNX graph then needs no rescaling.
            units = y.ravel().astype(np.float64) * self.target_std + self.target_mean
            self.estimator = GradientBoostingRegressor(**settings).fit(x, units)

    def get_extra_state(self) -> torch.Tensor:
        return pickled_state(self.estimator)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.estimator = unpickled_state(state)

    # ------------------------------------------------------------------ what it answers

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, or the target in its own units: what is served."""
        if self.estimator is None:
            raise ValueError("the gradient-boosted model is not fitted")
        # float32 inputs, as onnxruntime sees them: the trees split on float32 thresholds.
        inputs = x.numpy().astype(np.float32)
        if self.classify:
            out = self.estimator.predict_proba(inputs)
        else:
            out = self.estimator.predict(inputs).reshape(-1, 1)
        return torch.from_numpy(out.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x)
        if self.classify:  # log-probabilities: cross-entropy on them is the log loss
            return torch.log(out.clamp_min(1e-12))
        return (out - self.target_mean) / self.target_std

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.classify:
            return nn.functional.cross_entropy(output, target, reduction="sum")
        return nn.functional.mse_loss(output, target, reduction="sum")

    # ------------------------------------------------------------------ export.ExportsItself

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        return _Served(self), {}, [self.output_name]

    @property
    def output_name(self) -> str:
        return "probabilities" if self.classify else "value"

    def onnx_model(self, example: np.ndarray):
        """The trees as ONNX: input `x` (batch, inputs), one output, the served answer."""
        from onnx import helper
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        options = {id(self.estimator): {"zipmap": False}} if self.classify else None
        model = convert_sklearn(
            self.estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, example.shape[1]]))],
            options=options,
        )
        graph = model.graph
        # The classifier also outputs its label; the service reads the probabilities only.
        kept = next(o for o in graph.output if o.name in ("probabilities", "variable"))
        if kept.name != self.output_name:
            graph.node.append(helper.make_node("Identity", [kept.name], [self.output_name]))
            kept = helper.make_tensor_value_info(self.output_name, 1, [None, 1])
        del graph.output[:]
        graph.output.append(kept)
        _one_import_per_domain(model)
        return model


def _one_import_per_domain(model) -> None:
    """skl2onnx may list a domain twice (its own opset and a converter's): keep the highest."""
    best: dict[str, int] = {}
    for entry in model.opset_import:
        best[entry.domain] = max(best.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain, version in best.items():
        model.opset_import.add(domain=domain, version=version)


class _Served(nn.Module):
    def __init__(self, model: GradientBoosted) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def linear_baseline(x_train: np.ndarray, y_train: np.ndarray, n_labels: int | None):
    """The linear model on the same inputs: `answer(x)` gives class probabilities (logistic
    regression), or values (ridge regression) in the target's units."""
    if n_labels is None:
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=1.0).fit(x_train, y_train.ravel())
        return lambda x: ridge.predict(x).reshape(-1, 1)
    from sklearn.linear_model import LogisticRegression

    logistic = LogisticRegression(max_iter=2000).fit(x_train, y_train)

    def probabilities(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), n_labels))
        out[:, logistic.classes_] = logistic.predict_proba(x)  # a class absent from training: 0
        return out

    return probabilities
