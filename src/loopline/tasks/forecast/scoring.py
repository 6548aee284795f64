"""Scoring forecasters: errors per step ahead, on the very test windows every forecaster
(the candidate, the champion with its own spec, the baselines) can serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from loopline.offline.evaluate import (
    Evaluation,
    Scores,
    incomparable_specs,
    judge,
    row_errors,
    scores_of,
)
from loopline.onnx_runtime import run_onnx
from loopline.plots import new_figure, save_figure


@dataclass(frozen=True)
class StepScores(Scores):
    """A forecaster's errors, and its RMSE at each step ahead."""

    rmse_per_step: list[float] = field(default_factory=list)


def score_steps(y_true: np.ndarray, y_pred: np.ndarray, overlap: int = 1) -> StepScores:
    """RMSE and MAE overall and RMSE per horizon step, on windows where both are finite
    (arrays shaped (windows, horizon)); `overlap`: windows that may share targets."""
    err = row_errors(y_true, y_pred)
    per_step = [float(v) for v in np.sqrt(np.mean(err**2, axis=0))]
    return scores_of(err, overlap, StepScores, rmse_per_step=per_step)


def plot_per_step_rmse(curves: dict[str, Scores], path: Path, unit: str = "W") -> Path:
    """RMSE per horizon step of the model and each baseline: a PNG."""
    fig, ax = new_figure()
    for name, scores in curves.items():
        per_step = getattr(scores, "rmse_per_step", [scores.rmse])
        steps = range(1, len(per_step) + 1)
        ax.plot(steps, per_step, marker=".", label=f"{name} (mean {scores.rmse:.0f})")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel(f"RMSE ({unit})")
    ax.set_title("Test RMSE per horizon step")
    return save_figure(fig, ax, path)


def _torch_forecasts(task, test_frame, spec, model):
    # Here, not at the top: torch loads in seconds, and the service imports this family.
    from loopline.offline.train import predict

    examples = task.examples(test_frame, spec, "test")
    return examples.keys, predict(model, examples.x), examples.y


def onnx_forecasts(task, test_frame, spec, session):
    """Forecasts of an ONNX model with its own feature spec, from the raw test rows."""

    raw = test_frame[[*task.schema, "split"]]
    frame = task.add_labels(task.add_features(raw, spec), spec)
    examples = task.examples(frame, spec, "test")
    if not len(examples):
        return examples.keys, np.zeros((0, spec.options.horizon))
    return examples.keys, run_onnx(session, examples.x)


def evaluate_candidate(task, test_frame, spec, model, params, champion=None) -> Evaluation:
    """Score the candidate, the task's baselines and the champion on the same test rows.

    `champion` is (onnx session, its feature spec) or None. Rows are the window origins all
    forecasters can serve, so a champion with a longer window is compared fairly.
    """
    keys, predicted, truth = _torch_forecasts(task, test_frame, spec, model)
    forecasts = {"model": predicted}
    incomparable = incomparable_specs(spec, champion[1], task) if champion is not None else None
    if champion is not None and incomparable is None:
        try:
            champion_keys, champion_values = onnx_forecasts(
                task, test_frame, champion[1], champion[0]
            )
        except ValueError as error:  # e.g. a site the champion has no location for
            incomparable = str(error)
    if champion is not None and incomparable is None:
        position = pd.MultiIndex.from_frame(champion_keys).get_indexer(
            pd.MultiIndex.from_frame(keys)
        )
        aligned = np.full_like(predicted, np.nan, dtype=np.float64)
        found = position >= 0
        aligned[found] = champion_values[position[found]]
        forecasts["champion"] = aligned
    forecasts.update(task.baselines(test_frame, keys, spec, params))
    common = np.isfinite(truth).all(axis=1)
    for values in forecasts.values():
        common &= np.isfinite(values).all(axis=1)
    if not common.any():
        raise ValueError("no test window that every forecaster can score")
    overlap = task.loss_dependence(spec)
    scores = {
        name: score_steps(truth[common], values[common], overlap)
        for name, values in forecasts.items()
    }
    return judge(scores, params, incomparable)
