"""The project's params validate, the task keeps Loopline's task contract on the project's
own rows, and those rows keep the task's rules."""

from pathlib import Path

from loopline.offline.ingest import read_source
from loopline.offline.validate import validate_rows
from loopline.params import load_params
from loopline.testing import check_task

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
# The contract, not the accuracy, is tested here: one quick trial.
SMALL = ["tune.n_trials=1", "tune.max_epochs=1", "train.max_epochs=1"]


def test_params_validate():
    assert load_params(PARAMS).task_name == "tabular"


def test_the_task_keeps_the_contract():
    # Rules, features, split, examples, training, ONNX export with parity, and the
    # serving round trip, on the rows params.yaml reads (the family's columns come from
    # its `tabular:` section there).
    params = load_params(PARAMS)
    rows = read_source(params, params.plugin, PROJECT)
    check_task("tabular", frame=rows, params=PARAMS, overrides=SMALL)


def test_the_data_source_keeps_the_rules():
    params = load_params(PARAMS)
    task = params.plugin
    rows = read_source(params, task, PROJECT)
    report = validate_rows(rows, task.schema_for(params), task.rules(params), "data")
    assert report.bad_fraction <= params.validate_.max_bad_fraction, report.rule_failures
