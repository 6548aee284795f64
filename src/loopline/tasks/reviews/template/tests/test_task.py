"""The project's params validate, and the task keeps Loopline's task contract."""

from pathlib import Path

from loopline.offline.ingest import read_source
from loopline.params import load_params
from loopline.testing import check_task

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
# A small text classifier: the contract, not the accuracy, is tested here.
SMALL = [
    "tune.search_space={embed_size: {choices: [16]}, hidden_size: {choices: [16]}, "
    "layers: {choices: [1]}, kernel_size: {choices: [3]}, dropout: {choices: [0.1]}, "
    "learning_rate: {choices: [0.003]}, batch_size: {choices: [32]}, "
    "ngram_buckets: {choices: [1024]}}",
]


def test_params_validate():
    assert load_params(PARAMS).task_name == "reviews"


def test_the_task_keeps_the_contract():
    params = load_params(PARAMS)
    rows = read_source(params, params.plugin, PROJECT).head(240)
    check_task("reviews", frame=rows, params=PARAMS, overrides=SMALL)
