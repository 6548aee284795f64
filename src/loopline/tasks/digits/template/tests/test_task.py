"""The project's params validate, and the task keeps Loopline's task contract."""

from pathlib import Path

from loopline.params import load_params
from loopline.testing import check_task

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_validate():
    assert load_params(PARAMS).task_name == "digits"


def test_the_task_keeps_the_contract():
    # On 200 images generated from the task's rules: one epoch, ONNX export, parity.
    check_task("digits", params=PARAMS)
