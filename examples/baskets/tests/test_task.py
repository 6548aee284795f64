"""The baskets task keeps Loopline's task contract, on its own orders and on generated rows."""

from pathlib import Path

import pandas as pd

from loopline.contract import check_task

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"


def test_the_task_keeps_the_contract_on_the_sample_orders():
    # Rules, features, the split, examples, one epoch, ONNX export with parity, evaluation
    # and the serving round trip (requests and stream lines made by the task's Serving).
    orders = pd.read_csv(PROJECT / "sample" / "orders.csv", dtype={"order_id": str})
    check_task("tasks.baskets:BasketsTask", orders, params=PARAMS)


def test_the_task_keeps_the_contract_on_generated_rows():
    # Rows the kit makes from the schema and rules: one item per order.
    check_task("tasks.baskets:BasketsTask", params=PARAMS)
