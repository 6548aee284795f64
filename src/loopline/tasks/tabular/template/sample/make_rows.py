"""How sample/customers.csv was made: whether a customer churns (synthetic).

Seeded, so `python sample/make_rows.py` writes the very same file again. Churn follows
rules a straight line cannot draw (three or more support calls on the basic plan; a short tenure
with a high bill), with a little noise, so the trees or the MLP beat the linear baseline.
To bring your own table, point `ingest.source` in params.yaml at it and name its columns
in the `tabular:` section.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLUMNS = [
    "customer_id",
    "tenure_months",
    "monthly_spend",
    "support_calls",
    "plan",
    "region",
    "churned",
]
PLANS = ["basic", "plus", "pro"]
REGIONS = ["north", "south", "east", "west"]


def make_rows(n: int = 400, seed: int = 11) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(1, n + 1):
        tenure = int(rng.integers(1, 60))
        plan = str(rng.choice(PLANS, p=[0.5, 0.3, 0.2]))
        spend = round(float(rng.normal({"basic": 40, "plus": 70, "pro": 100}[plan], 15)), 2)
        calls = int(rng.poisson(2.0))
        region = str(rng.choice(REGIONS))
        churns = (calls >= 3 and plan == "basic") or (tenure < 18 and spend > 60)
        if rng.random() < 0.04:  # a few customers do what no rule says
            churns = not churns
        rows.append(
            [f"c-{number:04d}", tenure, spend, calls, plan, region, "yes" if churns else "no"]
        )
    return rows


if __name__ == "__main__":
    path = Path(__file__).with_name("customers.csv")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(make_rows())
    print(f"wrote {path}")
