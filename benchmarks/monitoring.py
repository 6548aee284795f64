"""Monitoring: false alarms on clean replays, detection delay of injected shifts, and cost.

Run: .venv/bin/python benchmarks/monitoring.py [--quick] [--reviews PATH] [--json PATH]
(about a minute on 2 cores; --quick skips the text part; the reviews are the shared
`../shared/data/reviews_dev.tsv`, never copied into the repository).

Solar (the builtin year of two sites, hourly): the year is cut into two-week blocks; the
even blocks are the reference (the training rows the profile keeps and, for the test
figure, the reference forecasts), the odd blocks a clean replay of the same process, and
the other way round (two clean replays). The served "model" is cheap on purpose, since the
monitor never looks inside it: per site, power from irradiance and temperature at the
target hour (least squares on the reference rows), every hour for the next 24. The log
holds what a service answering every hour would: each forecast with its newest reading.
Then, on the first replay from day 14 on: a sensor bias (GHI reads +30 W/m2 in daylight:
the forecasts read it) and a level shift (power x0.7, soiling: the forecasts do not know).

Text (reviews): a TF-IDF + logistic regression classifier on 10,000 reviews; its test
split gives the reference's predictions and error rate; 40 days of 300 held-out reviews a
day are the clean replay, and from day 14 a changed mix (80% of the day's reviews drawn
from ratings 1-4). People's labels are imported for every replayed review (live quality).

Printed: per signal and column, the share of clean windows over the threshold (the
per-column target is false_alarm_rate / columns of the signal, so a signal's is at most
false_alarm_rate) and alarms raised (min_windows consecutive windows); per shift, windows
from the fault to the first alarm per signal; the monitor's cost (read from SQLite + one
pass, calibration included) per 10,000 logged predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from loopline.config import MonitorParams, load_params  # noqa: E402
from loopline.monitor import MonitoringStore, Version, read_log, run_pass  # noqa: E402
from loopline.predlog import json_text, predictions_table  # noqa: E402
from loopline.reference import Quality, ReferenceProfile, columns_of  # noqa: E402

FAULT_DAY = 14
BLOCK = pd.Timedelta("14D")


def settings(**more) -> MonitorParams:
    # The profile keeps every reference row here (a year of two sites: ~9,000 per half).
    return MonitorParams(reference_rows=20_000, **more)


def write_log(url: str, records: pd.DataFrame, model: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url, json_serializer=json_text)
    metadata = MetaData()
    table = predictions_table(metadata)
    metadata.create_all(engine)
    rows = [
        {
            "logged_at": r.logged_at.to_pydatetime(),
            "model_name": model,
            "model_version": "1",
            "api": "bench",
            "key": r.key,
            "origin": None if pd.isna(r.origin) else r.origin.to_pydatetime(),
            "inputs": r.inputs,
            "output": r.output,
            "latency_ms": 1.0,
        }
        for r in records.itertuples()
    ]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    engine.dispose()


def one_pass(task, spec, profile, records, model, config, seed, labels=None) -> tuple:
    """(the pass, seconds to read the log and run it) on a fresh database."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/predictions.db"
        write_log(url, records, model)
        started = time.perf_counter()
        store = MonitoringStore(url)
        logged = read_log(url, model)
        result = run_pass(
            task, model, logged, lambda v: Version(spec, profile), config, store, seed, labels
        )
        seconds = time.perf_counter() - started
        store.close()
    return result, seconds


def false_alarms(result) -> dict[str, dict[str, float]]:
    """Per signal and column: windows tested, share over the threshold; alarms per signal."""
    rows = pd.DataFrame(result.windows)
    tested = rows[rows["statistic"].notna()]
    out: dict[str, dict[str, float]] = {}
    for (signal, feature), group in tested.groupby(["signal", "feature"]):
        out[f"{signal}:{feature}"] = {
            "windows": len(group),
            "over": float(group["exceeded"].mean()),
        }
    for signal in rows["signal"].unique():
        out[f"{signal}:alarms"] = {
            "windows": 0,
            "over": float(rows[rows.signal == signal].alarm.sum()),
        }
    return out


def delays(result, fault: pd.Timestamp, span: pd.Timedelta) -> dict[str, int | None]:
    """Per signal: the windows of the log from the fault's (1: the fault's own window) to
    the first alarm at or after it (None: never), and alarms before the fault (false)."""
    out: dict[str, int | None] = {}
    windows = pd.DataFrame(result.windows)
    for signal in ("feature_drift", "prediction_drift", "live_quality"):
        starts = sorted(
            pd.Timestamp(a["window_start"]) for a in result.alarms if a["signal"] == signal
        )
        after = [s for s in starts if s + span > fault]
        own = windows[(windows["signal"] == signal) & (windows["feature"] == "*")]
        logged = sorted(pd.Timestamp(s) for s in own["window_start"].unique())
        between = [s for s in logged if s + span > fault and (not after or s <= after[0])]
        out[signal] = len(between) if after else None
        out[f"{signal}_false_before"] = len(starts) - len(after)
    return out


# ---------------------------------------------------------------------- solar


def solar(seed: int) -> dict:
    params = load_params(ROOT / "params.yaml", ["task=solar"])
    task = params.plugin
    spec = task.new_feature_spec(params)
    frame = task.load_builtin(params).sort_values(["timestamp", "site_id"]).reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    block = ((frame["timestamp"] - frame["timestamp"].min()) // BLOCK).astype(int) % 2
    halves = [frame[block == b].reset_index(drop=True) for b in (0, 1)]
    config = settings(window="1D")
    out = {"clean": [], "shifts": {}}
    for n, (reference, replay) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        model = fit_power(reference)
        profile = solar_profile(task, spec, reference, model, config)
        records = solar_log(replay, model, spec.horizon)
        result, seconds = one_pass(task, spec, profile, records, "solar", config, seed)
        out["clean"].append(
            {"replay": n, "predictions": len(records), "seconds": seconds, **false_alarms(result)}
        )
        if n == 0:
            # From the replay's 15th day on (the replay skips the reference's blocks).
            fault = (
                replay["timestamp"].dt.floor("1D").drop_duplicates().sort_values().iloc[FAULT_DAY]
            )
            for name, broken in faults(replay, fault).items():
                shifted = solar_log(broken, model, spec.horizon)
                result, _ = one_pass(task, spec, profile, shifted, "solar", config, seed)
                out["shifts"][name] = delays(result, fault, pd.Timedelta(config.window))
    return out


def faults(replay: pd.DataFrame, fault: pd.Timestamp) -> dict[str, pd.DataFrame]:
    after = replay["timestamp"] >= fault
    bias = replay.copy()
    bias.loc[after & (bias["ghi"] > 0), "ghi"] += 30.0
    soiling = replay.copy()
    soiling.loc[after, "power_w"] *= 0.7
    return {"sensor bias (GHI +30 W/m2)": bias, "level shift (power x0.7)": soiling}


def fit_power(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per site: power from GHI, DNI and DHI, each times a smooth function of the hour and
    the day of the year (the sun's geometry), and GHI x temperature (least squares)."""
    model = {}
    for site, group in rows.groupby("site_id"):
        x = design(group)
        model[site] = np.linalg.lstsq(x, group["power_w"].to_numpy(), rcond=None)[0]
    return model


def design(rows: pd.DataFrame) -> np.ndarray:
    stamps = pd.DatetimeIndex(rows["timestamp"])
    hour = 2 * np.pi * (stamps.hour + stamps.minute / 60).to_numpy() / 24
    day = 2 * np.pi * stamps.day_of_year.to_numpy() / 365.25
    clock = [np.ones_like(hour), np.cos(hour), np.sin(hour), np.cos(2 * hour), np.sin(2 * hour)]
    season = [np.ones_like(day), np.cos(day), np.sin(day)]
    temp = rows["temp_air"].to_numpy(float)
    columns = [np.ones_like(hour), rows["ghi"].to_numpy(float) * temp]
    for name in ("ghi", "dni", "dhi"):
        light = rows[name].to_numpy(float)
        columns += [light * c * s for c in clock for s in season]
    return np.stack(columns, axis=1)


def forecasts(rows: pd.DataFrame, model, horizon: int) -> list[tuple]:
    """(site, origin, newest reading, forecast of the next `horizon` hours, truth) for every
    hour with `horizon` consecutive hours after it."""
    out = []
    for site, group in rows.groupby("site_id"):
        group = group.sort_values("timestamp").reset_index(drop=True)
        predicted = np.clip(design(group) @ model[site], 0, None)
        times = group["timestamp"]
        power = group["power_w"].to_numpy()
        steps = (times.diff().shift(-1) == pd.Timedelta("1h")).to_numpy()
        readings = group.to_dict("records")
        for i in range(len(group) - horizon):
            if not steps[i : i + horizon].all():
                continue  # a block edge: the next hours are not there
            out.append(
                (
                    site,
                    times[i],
                    readings[i],
                    predicted[i + 1 : i + 1 + horizon],
                    power[i + 1 : i + 1 + horizon],
                )
            )
    return out


def solar_profile(task, spec, reference, model, config) -> ReferenceProfile:
    features = columns_of(task.monitor_inputs(reference, spec), config.reference_rows)
    made = sorted(forecasts(reference, model, spec.horizon), key=lambda f: f[1])
    outputs = np.array([f[3] for f in made])
    truth = np.array([f[4] for f in made])
    shown = task.monitor_outputs(outputs.tolist(), spec)
    losses = task.reference_losses(truth, outputs, spec)
    return ReferenceProfile(
        features=features,
        predictions=columns_of(shown, config.reference_rows),
        quality=Quality(
            "rmse",
            float(task.quality_figure(losses)),
            losses.tolist(),
            task.reference_bias(truth, outputs, spec).tolist(),
        ),
    )


def solar_log(replay: pd.DataFrame, model, horizon: int) -> pd.DataFrame:
    made = forecasts(replay, model, horizon)
    return pd.DataFrame(
        {
            "key": [f[0] for f in made],
            "origin": [f[1] for f in made],
            "logged_at": [f[1] for f in made],
            "inputs": [
                {"readings": 24, "last": {**f[2], "timestamp": f[1].isoformat()}} for f in made
            ],
            "output": [[round(float(v), 3) for v in f[3]] for f in made],
        }
    ).sort_values("origin")


# ---------------------------------------------------------------------- text


def reviews(path: Path, seed: int) -> dict:
    from loopline.tasks.text.baseline import train_text_baseline

    params = load_params(ROOT / "params.yaml", ["task=reviews"])
    task = params.plugin
    spec = task.new_feature_spec(params)
    names = list(spec.labels)
    data = pd.read_csv(path, sep="\t", dtype={"id": str}).dropna(subset=["document"])
    data = data.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    train, test, pool = data.iloc[:10_000], data.iloc[10_000:15_000], data.iloc[15_000:]
    model = train_text_baseline(train["document"].tolist(), train["label"].to_numpy(), seed=seed)
    probabilities = model.probabilities(test["document"].tolist())
    config = settings(window="1D")
    shown = task.monitor_outputs(task.reference_outputs(probabilities, spec), spec)
    losses = task.reference_losses(test["label"].to_numpy(), probabilities, spec)
    profile = ReferenceProfile(
        features=columns_of(task.monitor_inputs(train, spec), config.reference_rows),
        predictions=columns_of(shown, config.reference_rows),
        quality=Quality("error_rate", float(task.quality_figure(losses)), losses.tolist()),
    )
    rng = np.random.default_rng(seed)
    low = pool[pool["rating"] <= 4]
    start = pd.Timestamp("2026-01-01", tz="UTC")
    out = {}
    for name, shift in (("clean", False), ("changed text mix (80% ratings 1-4)", True)):
        days = []
        for day in range(40):
            mixed = shift and day >= FAULT_DAY
            picked = pool.sample(300, random_state=int(rng.integers(2**31)))
            if mixed:
                n = 240
                picked = pd.concat(
                    [low.sample(n, random_state=int(rng.integers(2**31))), picked.iloc[n:]]
                )
            picked = picked.assign(
                logged_at=start
                + pd.Timedelta(days=day)
                + pd.to_timedelta(np.sort(rng.integers(0, 86_000, len(picked))), unit="s")
            )
            days.append(picked)
        replay = pd.concat(days).drop_duplicates("id").reset_index(drop=True)
        predicted = model.probabilities(replay["document"].tolist()).argmax(axis=1)
        records = pd.DataFrame(
            {
                "key": replay["id"],
                "origin": pd.NaT,
                "logged_at": replay["logged_at"],
                "inputs": [{"text": t} for t in replay["document"]],
                "output": [{"label": names[int(i)]} for i in predicted],
            }
        )
        labels = pd.DataFrame({"id": replay["id"], "label": replay["label"].astype(int)})
        result, seconds = one_pass(task, spec, profile, records, "reviews", config, seed, labels)
        entry = {"predictions": len(records), "seconds": seconds, **false_alarms(result)}
        if shift:
            entry["delays"] = delays(
                result, start + pd.Timedelta(days=FAULT_DAY), pd.Timedelta("1D")
            )
        out[name] = entry
    return out


# ---------------------------------------------------------------------- report


def print_false_alarms(title: str, entry: dict, config: MonitorParams) -> None:
    print(
        f"\n{title}: {entry['predictions']} predictions, pass {entry['seconds']:.2f} s "
        f"({entry['seconds'] / entry['predictions'] * 10_000:.2f} s per 10,000)"
    )
    print(f"  {'signal:column':42s} {'windows':>7s} {'over threshold':>15s}")
    for key, value in entry.items():
        if isinstance(value, dict) and "over" in value:
            if key.endswith(":alarms"):
                print(f"  {key:42s} {'':>7s} {int(value['over']):>10d} alarms")
            else:
                print(f"  {key:42s} {value['windows']:7d} {value['over']:15.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="solar only")
    parser.add_argument("--reviews", type=Path, default=ROOT.parent / "shared/data/reviews_dev.tsv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = settings()
    print(
        f"monitor: window {config.window}, false_alarm_rate {config.false_alarm_rate} per "
        f"window and signal, min_rows {config.min_rows}, min_windows {config.min_windows}, "
        f"{config.calibration_draws} calibration draws; shifts from day {FAULT_DAY}"
    )
    results = {"solar": solar(args.seed)}
    for entry in results["solar"]["clean"]:
        print_false_alarms(f"solar clean replay {entry['replay']}", entry, config)
    print("\nsolar detection delay (windows after the fault's window; None = never):")
    for name, found in results["solar"]["shifts"].items():
        print(f"  {name:32s} {found}")
    if not args.quick and args.reviews.exists():
        results["reviews"] = reviews(args.reviews, args.seed)
        for name, entry in results["reviews"].items():
            print_false_alarms(f"reviews {name}", entry, config)
            if "delays" in entry:
                print(f"  detection delay: {entry['delays']}")
    runs = [e for e in results["solar"]["clean"]] + list(results.get("reviews", {}).values())
    total = sum(e["predictions"] for e in runs)
    seconds = sum(e["seconds"] for e in runs)
    print(
        f"\ncost: {seconds / total * 10_000:.2f} s per 10,000 logged predictions "
        f"({total} predictions, read + one pass with calibration)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
