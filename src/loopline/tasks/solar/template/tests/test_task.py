"""The project's params validate, and the task keeps Loopline's task contract."""

from pathlib import Path

from loopline.params import load_params
from loopline.testing import check_task

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# A small forecaster over a short horizon: the contract, not the accuracy, is tested here.
SMALL = [
    "solar.horizon=6",
    "tune.search_space={hidden_size: {choices: [8]}, num_layers: {choices: [1]}, "
    "dropout: {choices: [0.0]}, learning_rate: {choices: [0.003]}, batch_size: {choices: [64]}, "
    "window: {choices: [12]}, cell: {choices: [gru]}}",
]


def test_params_validate():
    assert load_params(PARAMS).task_name == "solar"


def test_the_task_keeps_the_contract():
    params = load_params(PARAMS)
    rows = params.plugin.load_builtin(params)
    site = rows["site_id"] == rows["site_id"].iloc[0]
    march = (rows["timestamp"] >= "2021-03-01") & (rows["timestamp"] < "2021-04-01")
    check_task("solar", frame=rows[site & march], params=PARAMS, overrides=SMALL)
