"""How sample/rows.csv was made: a machine's state from three sensor readings (synthetic).

Seeded, so `python sample/make_rows.py` writes the very same file again. To bring your own
problem, replace rows.csv with your data (or point `ingest.source` in params.yaml at it)
and list its columns in the task module.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# Each state's typical temperature (°C), vibration (mm/s) and oil pressure (bar).
STATES = {"ok": (60.0, 0.2, 5.0), "worn": (70.0, 0.5, 4.5), "faulty": (80.0, 0.9, 3.8)}
SPREAD = (5.0, 0.12, 0.3)
COLUMNS = ["id", "temperature", "vibration", "pressure", "state"]


def make_rows(per_state: int = 100, seed: int = 7) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    states = rng.permutation(np.repeat(list(STATES), per_state))
    rows = []
    for number, state in enumerate(states, start=1):
        values = rng.normal(STATES[state], SPREAD)
        rows.append([f"m-{number:04d}", *(f"{v:.2f}" for v in values), state])
    return rows


if __name__ == "__main__":
    path = Path(__file__).with_name("rows.csv")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(make_rows())
    print(f"wrote {path}")
