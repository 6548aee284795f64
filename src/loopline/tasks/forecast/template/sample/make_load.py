"""How sample/load.csv was made: hourly electric load of three meters (synthetic).

Each meter's load follows the time of day (a morning and an evening peak), the day of the
week (weekends lower), the temperature (air conditioning above 20 °C) and noise. Seeded,
so `python sample/make_load.py` writes the very same file again. To bring your own series,
replace load.csv with your data (or point `ingest.source` in params.yaml at it) and name its
columns in the `forecast:` section.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["meter_id", "timestamp", "temperature_c", "load_kw"]
METERS = {"m-north": 40.0, "m-south": 65.0, "m-east": 25.0}  # each one's typical load, kW


def daily_shape(hour: np.ndarray) -> np.ndarray:
    """A morning and an evening peak over a night low (about 0.6 .. 1.4)."""
    morning = np.exp(-0.5 * ((hour - 8.0) / 2.0) ** 2)
    evening = np.exp(-0.5 * ((hour - 19.0) / 2.5) ** 2)
    return 0.6 + 0.5 * morning + 0.8 * evening


def make_load(
    weeks: int = 8, seed: int = 7, start: str = "2024-05-06", meters: dict | None = None
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=weeks * 7 * 24, freq="1h", tz="UTC")
    hour = times.hour.to_numpy(dtype=float)
    weekend = times.day_of_week.to_numpy() >= 5
    frames = []
    for meter, level in (meters or METERS).items():
        # Warm days and cool days: a slow random walk under a daily swing.
        drift = np.cumsum(rng.normal(0.0, 0.25, len(times)))
        drift -= np.linspace(drift[0], drift[-1], len(times))
        temperature = 21.0 + 6.0 * np.sin(2 * np.pi * (hour - 9.0) / 24) + drift
        cooling = 0.04 * np.clip(temperature - 20.0, 0.0, None)
        noise = np.zeros(len(times))
        for t in range(1, len(times)):  # persistent noise (AR(1)), as real load has
            noise[t] = 0.6 * noise[t - 1] + rng.normal(0.0, 0.04)
        load = level * (daily_shape(hour) * np.where(weekend, 0.7, 1.0) + cooling + noise)
        frames.append(
            pd.DataFrame(
                {
                    "meter_id": meter,
                    "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "temperature_c": temperature.round(2),
                    "load_kw": np.clip(load, 0.0, None).round(3),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[COLUMNS]


if __name__ == "__main__":
    path = Path(__file__).with_name("load.csv")
    make_load().to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    print(f"wrote {path}")
