"""The project's params validate, and the task keeps Loopline's task contract."""

from pathlib import Path

from loopline.offline.ingest import read_source
from loopline.params import load_params
from loopline.testing import check_task

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
# A small forecaster over a short horizon: the contract, not the accuracy, is tested here.
SMALL = [
    "forecast.horizon=6",
    "forecast.lags=[24]",
    "tune.search_space={hidden_size: {choices: [8]}, num_layers: {choices: [1]}, "
    "dropout: {choices: [0.0]}, learning_rate: {choices: [0.003]}, batch_size: {choices: [64]}, "
    "window: {choices: [12]}, cell: {choices: [gru]}}",
]


def test_params_validate():
    assert load_params(PARAMS).task_name == "forecast"


def test_the_task_keeps_the_contract():
    params = load_params(PARAMS)
    rows = read_source(params, params.plugin, PROJECT)
    one = rows[rows[params.forecast.entity] == rows[params.forecast.entity].iloc[0]]
    check_task("forecast", frame=one.head(24 * 21), params=PARAMS, overrides=SMALL)
