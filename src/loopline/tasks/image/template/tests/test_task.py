"""The project's params validate, and the task keeps Loopline's task contract."""

from pathlib import Path

from loopline.offline.ingest import read_source
from loopline.params import load_params
from loopline.testing import check_task

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"


def test_params_validate():
    params = load_params(PARAMS)
    assert params.task_name == "image"
    assert params.plugin.schema_for(params)["label"] == "string"


def test_the_task_keeps_the_contract():
    # On the sample's images: one epoch, ONNX export, parity.
    params = load_params(PARAMS)
    rows = read_source(params, params.plugin, PROJECT)
    check_task("image", frame=rows, params=PARAMS)
