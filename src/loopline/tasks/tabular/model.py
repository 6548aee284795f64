"""The tabular candidates beside the MLP (`loopline.tasks.rows.model.RowMLP`): scikit-learn's
gradient-boosted trees and linear model, which fit and export themselves (`train.FitsItself`,
`export.ExportsItself`).

`GradientBoosted` and `Linear` are `nn.Module`s so the shared path (checkpoints, `predict`,
the parity check) treats them like any model: `forward` runs the estimator on NumPy and
gives what the MLP's gives (log-probabilities, or the scaled target), so `train.fit` scores
all three on one loss; `predict` and the ONNX graph give what is served (class
probabilities, or the target in its own units).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from loopline.offline.train import pickled_state, unpickled_state
from loopline.onnx_runtime import INPUT_NAME


class _Estimated(nn.Module):
    """A scikit-learn classifier or regressor held by an `nn.Module` (`estimator`, pickled
    into the module's state): a subclass says which (`classifier`, `regressor`). A
    regressor learns the target in its own units, so the ONNX graph needs no rescaling."""

    what = "model"  # in messages: "the <what> is not fitted"

    def __init__(
        self, n_outputs: int, classify: bool, target_mean: float, target_std: float
    ) -> None:
        super().__init__()
        self.n_outputs, self.classify = n_outputs, classify
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.estimator = None

    def classifier(self, seed: int):
        raise NotImplementedError

    def regressor(self, seed: int):
        raise NotImplementedError

    # ------------------------------------------------------------------ train.FitsItself

    def fit_examples(self, x_train, y_train, x_val, y_val, seed: int) -> None:
        x, y = x_train.numpy(), y_train.numpy()
        if self.classify:
            missing = sorted(set(range(self.n_outputs)) - set(y.tolist()))
            if missing:  # its probabilities would lack those columns
                raise ValueError(
                    f"class id(s) {missing} have no training row: cannot fit the {self.what}"
                )
            self.estimator = self.classifier(seed).fit(x, y)
        else:
            units = y.ravel().astype(np.float64) * self.target_std + self.target_mean
            self.estimator = self.regressor(seed).fit(x, units)

    def get_extra_state(self) -> torch.Tensor:
        return pickled_state(self.estimator)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.estimator = unpickled_state(state)

    # ------------------------------------------------------------------ what it answers

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, or the target in its own units: what is served."""
        if self.estimator is None:
            raise ValueError(f"the {self.what} is not fitted")
        # float32 inputs, as onnxruntime sees them (the trees split on float32 thresholds).
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
        """The estimator as ONNX: input `x` (batch, inputs), one output, the served answer."""
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
        # A classifier also outputs its label; the service reads the probabilities only.
        kept = next(o for o in graph.output if o.name in ("probabilities", "variable"))
        if kept.name != self.output_name:
            graph.node.append(helper.make_node("Identity", [kept.name], [self.output_name]))
            kept = helper.make_tensor_value_info(self.output_name, 1, [None, 1])
        del graph.output[:]
        graph.output.append(kept)
        _one_import_per_domain(model)
        return model


class GradientBoosted(_Estimated):
    """GradientBoostingClassifier / Regressor (skl2onnx converts these; the histogram-based
    ones it cannot, with scikit-learn 1.9)."""

    what = "gradient-boosted model"

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
        super().__init__(n_outputs, classify, target_mean, target_std)
        self.trees, self.depth, self.shrinkage = trees, depth, shrinkage

    def _settings(self, seed: int) -> dict:
        return {
            "n_estimators": self.trees,
            "max_depth": self.depth,
            "learning_rate": self.shrinkage,
            "random_state": seed,
        }

    def classifier(self, seed: int):
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(**self._settings(seed))

    def regressor(self, seed: int):
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(**self._settings(seed))


class Linear(_Estimated):
    """The linear model as a candidate: multinomial logistic regression (a softmax over
    one linear score per class; two classes: the logistic) for classes, ridge regression for
    a number. `inverse_regularization` is scikit-learn's `C`: larger fits the training rows
    more closely (the ridge's penalty `alpha` is 1/C)."""

    what = "linear model"

    def __init__(
        self,
        n_outputs: int,
        classify: bool,
        inverse_regularization: float,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__(n_outputs, classify, target_mean, target_std)
        if not inverse_regularization > 0:
            raise ValueError(f"inverse_regularization must be > 0, got {inverse_regularization}")
        self.inverse_regularization = float(inverse_regularization)

    def classifier(self, seed: int):
        from sklearn.linear_model import LogisticRegression

        # lbfgs fits the multinomial model for three classes or more.
        return LogisticRegression(C=self.inverse_regularization, max_iter=2000, random_state=seed)

    def regressor(self, seed: int):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0 / self.inverse_regularization)


def _one_import_per_domain(model) -> None:
    """skl2onnx may list a domain twice (its own opset and a converter's): keep the highest."""
    best: dict[str, int] = {}
    for entry in model.opset_import:
        best[entry.domain] = max(best.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain, version in best.items():
        model.opset_import.add(domain=domain, version=version)


class _Served(nn.Module):
    def __init__(self, model: _Estimated) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)
