"""What left the shared core for the one task family that uses it (issue 26), for the
compatibility layer: a task package or a saved model of the layout before keeps working.

- `FORMER_SPEC_FIELDS`: fields a `FeatureSpec` held before they moved into the forecast
  family's typed options (`loopline.tasks.forecast.options.SeriesOptions`). A spec saved
  with them, or a task that still passes them, has them put into its options where the
  task's `Options` declares them (`loopline.offline.features`).
- `FORMER_NAMES`: names an old module path (`loopline.labeling`, `loopline.evaluate`) gave
  that now live in the family's package; the old path forwards them there, with a
  DeprecationWarning naming the new place (`loopline._moved.forward`).
"""

from __future__ import annotations

FORMER_SPEC_FIELDS = ("horizon", "freq", "window", "group_column", "time_column")
# The spec's former order after `target_column`, for a task that passed them by position.
FORMER_SPEC_ORDER = (
    "horizon",
    "freq",
    "group_column",
    "time_column",
    "options",
    "window",
    "mean",
    "std",
    "target_mean",
    "target_std",
    "labels",
)

_WINDOWS = "loopline.tasks.forecast.windows"
_SCORING = "loopline.tasks.forecast.scoring"

FORMER_NAMES: dict[str, dict[str, str]] = {
    "loopline.labeling": dict.fromkeys(
        ("label_columns", "utc_values", "shifted_values", "add_forecast_labels", "make_windows"),
        _WINDOWS,
    ),
    "loopline.evaluate": dict.fromkeys(
        ("plot_per_step_rmse", "onnx_forecasts", "evaluate_candidate", "score_steps"), _SCORING
    ),
}
