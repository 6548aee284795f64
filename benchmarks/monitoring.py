"""Monitoring: false alarms on clean replays of every family, power on injected shifts, cost.

Run: .venv/bin/python benchmarks/monitoring.py [--quick] [--reviews PATH] [--json PATH]
(full: about 5 minutes on 2 cores, text included when the reviews are there; --quick: a
minute, fewer repetitions and no text; the reviews are the shared
`../shared/data/reviews_dev.tsv`, never copied into the repository).

The claim checked: a clean window (same process as the reference, autocorrelation and all)
crosses a signal's calibrated threshold with probability at most `false_alarm_rate`. Per
family and signal: the clean windows tested, the share over the threshold with its Wilson
95% interval, and PASS when the share is at most the rate and the interval's upper end at
most twice it (MISS otherwise; a cell under 400 windows, as in --quick, says "few" and
whether the share alone is at most the rate).
Windows of one replay are neighbours in time and thresholds are shared within a replay,
so the interval is optimistic; many replays (seeds, splits) keep that small.

Families (each replay's windows are one event-time day, `monitor.period` 1D):
- forecast (solar, the builtin year of two sites, hourly): the year is cut into two-week
  blocks, the even ones the reference and the odd ones a clean replay, and the other way
  round, for three offsets of the block grid (six replays). The served "model" is cheap on
  purpose (per site, power from irradiance and temperature at the target hour, least
  squares on the reference blocks); the reference's losses are out of fold (each block
  forecast by the fit on the other blocks), as a profile's test split is out of sample.
  Shifts on every replay from its 15th day: a sensor bias (GHI +30 W/m2 in daylight: the
  forecasts read it) and soiling (power x0.7: the forecasts do not know).
- text (reviews, in date order: a day's reviews are of the same few movies): eight-week
  blocks of dates alternate between the reference side (10,000 reviews train a TF-IDF +
  logistic regression; the rest give the profile's predictions and error rate) and a
  clean replay (each day a window, people's labels imported for all). Shift: from the
  15th day of 40, 80% of each day's reviews drawn from ratings 1-4 (five stretches).
- image (scikit-learn's digits, a logistic regression on the pixels): per seed a random
  split into training images (the profile's brightness and contrast), test images (its
  predicted labels and error rate) and a replay pool cut into windows of 28 images. Shift:
  from the 8th window, dimmer scans (pixels x0.75).
- tabular (a synthetic table in time order, a row per 30 minutes: two AR(1) numbers, an
  iid number, a region that persists for days (Markov chain) and an iid plan; a logistic
  regression on them): per seed the reference is 5,000 rows, the test 2,000 rows after,
  the clean replay the 60 days after. Shifts from day 15: the iid number +0.6, and the
  labels of one region flipped (concept drift: live quality only).
Image and tabular tasks watch their inputs only; here a thin wrapper (`Watched`) adds the
predicted label and the error rate against people's labels, as the text family watches
them, so that every kind of statistic is calibrated on every family.

Power: per shift and signal, the replays whose signal alarmed within 7 windows of the
fault's window (`min_periods` consecutive windows over), the median delay in windows (1:
the fault's own window), and the share of windows from the fault on that crossed.
Cost: reading the log from SQLite plus one pass (calibration included) per 10,000 logged
predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from loopline.config import MonitorParams  # noqa: E402
from loopline.offline.reference import Quality, ReferenceProfile, columns_of  # noqa: E402
from loopline.online.predlog import json_text, predictions_table  # noqa: E402
from loopline.params import load_params  # noqa: E402
from loopline.watch.monitor import SIGNALS, MonitoringStore, Version, read_log, run_pass  # noqa: E402

FAULT_DAY = 14  # the fault's window: the 15th of a replay
DETECT_WITHIN = 7  # windows from the fault's (its own counted) to count as detected
CELL = 400  # clean windows a family's cell needs for a verdict
START = pd.Timestamp("2026-01-01", tz="UTC")


def settings(**more) -> MonitorParams:
    # The profile keeps every reference row here (a year of two sites: ~9,000 per half).
    return MonitorParams(**{"reference_rows": 200_000, "period": "1D", **more})


# ---------------------------------------------------------------------- one pass


def write_log(url: str, records: pd.DataFrame, model: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url, json_serializer=json_text)
    metadata = MetaData()
    table = predictions_table(metadata)
    metadata.create_all(engine)
    rows = [
        {
            "logged_at": r.logged_at.floor("us").to_pydatetime(),
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


class Tally:
    """One family's clean windows per signal (and column), its shifts' detections, cost."""

    def __init__(self) -> None:
        self.clean: dict[str, list[int]] = {}  # signal or signal:column -> [tested, over]
        self.shifts: dict[str, dict[str, list]] = {}
        self.predictions = 0
        self.seconds = 0.0
        self.replays = 0

    def add_clean(self, result, seconds: float, predictions: int) -> None:
        self.replays += 1
        self.predictions += predictions
        self.seconds += seconds
        rows = pd.DataFrame(result.periods)
        tested = rows[rows["statistic"].notna()]
        for (signal, feature), group in tested.groupby(["signal", "feature"]):
            key = signal if feature == "*" else f"{signal}:{feature}"
            count = self.clean.setdefault(key, [0, 0])
            count[0] += len(group)
            count[1] += int(group["exceeded"].sum())

    def add_shift(self, name: str, result, fault: pd.Timestamp, span: pd.Timedelta) -> None:
        rows = pd.DataFrame(result.periods)
        rows = rows[(rows["feature"] == "*") & rows["statistic"].notna()]
        for signal in SIGNALS:
            own = rows[rows["signal"] == signal].sort_values("period_start")
            starts = pd.to_datetime(own["period_start"], utc=True)
            after = own[(starts + span > fault).to_numpy()]
            if after.empty:
                continue
            alarms = np.flatnonzero(after["alarm"].to_numpy(bool))
            delay = int(alarms[0]) + 1 if len(alarms) else None
            entry = self.shifts.setdefault(name, {}).setdefault(signal, [])
            entry.append((delay, float(after["exceeded"].mean())))

    def summary(self, rate: float) -> dict[str, Any]:
        clean = {}
        for key, (n, k) in sorted(self.clean.items()):
            low, high = wilson(k, n)
            share = k / n if n else float("nan")
            verdict = "PASS" if share <= rate and high <= 2 * rate else "MISS"
            if n < CELL:  # too few windows for the bound: the rate alone
                verdict = "few: " + ("rate ok" if share <= rate else "rate over")
            clean[key] = {
                "windows": n,
                "over": k,
                "rate": share,
                "low": low,
                "high": high,
                "verdict": verdict if ":" not in key else "",
            }
        shifts = {}
        for name, signals in self.shifts.items():
            shifts[name] = {}
            for signal, found in signals.items():
                delays = [d for d, _ in found if d is not None and d <= DETECT_WITHIN]
                shifts[name][signal] = {
                    "replays": len(found),
                    "detected": len(delays),
                    "median_delay": float(np.median(delays)) if delays else None,
                    "power": float(np.mean([p for _, p in found])),
                }
        return {
            "replays": self.replays,
            "predictions": self.predictions,
            "seconds_per_10k": self.seconds / max(self.predictions, 1) * 10_000,
            "clean": clean,
            "shifts": shifts,
        }


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of k successes in n trials (scipy's)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


class Watched:
    """A task that also watches the predicted label (categorical) and its error rate
    against people's labels, as the text family does (benchmark only: image and tabular
    tasks watch their inputs)."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def monitor_outputs(self, outputs: list, spec) -> pd.DataFrame:
        labels = [o.get("label") if isinstance(o, dict) else None for o in outputs]
        return pd.DataFrame({"predicted_label": pd.Series(labels, dtype="string")})

    def live_losses(self, predictions, rows, labels, spec) -> np.ndarray:
        given = dict(zip(labels["id"].astype(str), labels["label"].astype(str), strict=True))
        out = np.full(len(predictions), np.nan)
        pairs = zip(predictions["key"], predictions["output"], strict=True)
        for n, (key, output) in enumerate(pairs):
            truth = given.get(str(key))
            if truth is not None and isinstance(output, dict):
                out[n] = float(str(output.get("label")) != truth)
        return out

    def quality_figure(self, losses: np.ndarray):
        return losses.mean(axis=-1)


def label_profile(task, spec, inputs: pd.DataFrame, predicted, truth, config) -> ReferenceProfile:
    """A classifier's profile: its inputs' monitored columns, its predicted labels and
    their losses (wrong: 1) on test rows, in the order given."""
    predicted, truth = np.asarray(predicted).astype(str), np.asarray(truth).astype(str)
    losses = (predicted != truth).astype(np.float64)
    return ReferenceProfile(
        features=columns_of(task.monitor_inputs(inputs, spec), config.reference_rows),
        predictions=columns_of(pd.DataFrame({"predicted_label": predicted}), config.reference_rows),
        quality=Quality("error_rate", float(losses.mean()), losses.tolist()),
    )


def labelled_pass(task, spec, profile, model, rows, config, seed, **log) -> tuple:
    """(the pass, seconds, predictions) of a classifier's log: `rows` (a frame) logged at
    `log["times"]` with ids `log["keys"]`, answered `log["predicted"]`, and people's
    labels `log["truth"]` for all."""
    records = pd.DataFrame(
        {
            "key": [str(k) for k in log["keys"]],
            "origin": pd.NaT,
            "logged_at": list(log["times"]),
            "inputs": rows.to_dict("records"),
            "output": [{"label": str(p)} for p in log["predicted"]],
        }
    )
    people = pd.DataFrame({"id": records["key"], "label": np.asarray(log["truth"]).astype(str)})
    result, seconds = one_pass(task, spec, profile, records, model, config, seed, people)
    return result, seconds, len(records)


def spread(days: int, per_day: int, start: pd.Timestamp = START) -> pd.DatetimeIndex:
    """Logging times: `per_day` predictions a day, evenly spread over `days` days."""
    step = pd.Timedelta("1D") / per_day
    return pd.DatetimeIndex(
        [start + pd.Timedelta(days=d) + i * step for d in range(days) for i in range(per_day)]
    )


# ---------------------------------------------------------------------- forecast (solar)


def solar(seed: int, quick: bool) -> Tally:
    params = load_params(ROOT / "params.yaml", ["task=solar"])
    task = params.plugin
    spec = task.new_feature_spec(params)
    frame = task.load_builtin(params).sort_values(["timestamp", "site_id"]).reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    config = settings()
    tally = Tally()
    for offset in [0] if quick else [0, 5, 10]:
        elapsed = frame["timestamp"] - frame["timestamp"].min() + pd.Timedelta(days=offset)
        block = (elapsed // pd.Timedelta("14D")).astype(int)
        halves = [frame[block % 2 == b].reset_index(drop=True) for b in (0, 1)]
        blocks = [block[block % 2 == b].reset_index(drop=True) for b in (0, 1)]
        for n in (0, 1):
            reference, replay = halves[n], halves[1 - n]
            model = fit_power(reference)
            profile = solar_profile(task, spec, reference, blocks[n], model, config)
            records = solar_log(replay, model, spec.options.horizon)
            result, seconds = one_pass(task, spec, profile, records, "solar", config, seed)
            tally.add_clean(result, seconds, len(records))
            if quick and n == 1:
                continue
            days = replay["timestamp"].dt.floor("1D").drop_duplicates().sort_values()
            fault = days.iloc[FAULT_DAY]
            for name, broken in faults(replay, fault).items():
                shifted = solar_log(broken, model, spec.options.horizon)
                result, _ = one_pass(task, spec, profile, shifted, "solar", config, seed)
                tally.add_shift(name, result, fault, pd.Timedelta(config.period))
    return tally


def faults(replay: pd.DataFrame, fault: pd.Timestamp) -> dict[str, pd.DataFrame]:
    after = replay["timestamp"] >= fault
    bias = replay.copy()
    bias.loc[after & (bias["ghi"] > 0), "ghi"] += 30.0
    soiling = replay.copy()
    soiling.loc[after, "power_w"] *= 0.7
    return {"sensor bias (GHI +30 W/m2)": bias, "soiling (power x0.7)": soiling}


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


def solar_profile(task, spec, reference, blocks, model, config) -> ReferenceProfile:
    """Inputs and forecasts of the served fit; losses out of fold (each two-week block by
    the fit on the others), in event-time order."""
    features = columns_of(task.monitor_inputs(reference, spec), config.reference_rows)
    made = sorted(forecasts(reference, model, spec.options.horizon), key=lambda f: f[1])
    shown = task.monitor_outputs(np.array([f[3] for f in made]).tolist(), spec)
    held = []
    for b in blocks.unique():
        own = (blocks == b).to_numpy()
        held += forecasts(reference[own], fit_power(reference[~own]), spec.options.horizon)
    held.sort(key=lambda f: (f[1], f[0]))
    outputs, truth = np.array([f[3] for f in held]), np.array([f[4] for f in held])
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


# ---------------------------------------------------------------------- text (reviews)


def reviews(path: Path, seed: int) -> Tally:
    from loopline.tasks.text.baseline import train_text_baseline

    params = load_params(ROOT / "params.yaml", ["task=reviews"])
    task = params.plugin
    spec = task.new_feature_spec(params)
    names = list(spec.labels)
    data = pd.read_csv(path, sep="\t", dtype={"id": str}).dropna(subset=["document"])
    data["day"] = pd.to_datetime(data["date"], format="%y.%m.%d", utc=True)
    # Date order; within a day, the file's order (a day's reviews are of the same movies).
    data = data.sort_values("day", kind="stable").reset_index(drop=True)
    side = ((data["day"] - data["day"].min()) // pd.Timedelta("56D")).astype(int) % 2
    reference, replay = data[side == 0], data[side == 1].reset_index(drop=True)
    train = reference.sample(10_000, random_state=seed)
    test = reference.drop(train.index)
    model = train_text_baseline(train["document"].tolist(), train["label"].to_numpy(), seed=seed)
    config = settings()
    probabilities = model.probabilities(test["document"].tolist())
    shown = task.monitor_outputs(task.reference_outputs(probabilities, spec), spec)
    losses = task.reference_losses(test["label"].to_numpy(), probabilities, spec)
    profile = ReferenceProfile(
        features=columns_of(task.monitor_inputs(reference, spec), config.reference_rows),
        predictions=columns_of(shown, config.reference_rows),
        quality=Quality("error_rate", float(task.quality_figure(losses)), losses.tolist()),
    )

    def records(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        # Each review logged on its day (its own day, or the replay's n-th), in file order.
        within = rows.groupby("day").cumcount() / rows.groupby("day")["id"].transform("size")
        logged = rows["logged"] + pd.to_timedelta(within * 86_000, unit="s")
        predicted = model.probabilities(rows["document"].tolist()).argmax(axis=1)
        log = pd.DataFrame(
            {
                "key": rows["id"],
                "origin": pd.NaT,
                "logged_at": logged,
                "inputs": [{"text": t} for t in rows["document"]],
                "output": [{"label": names[int(i)]} for i in predicted],
            }
        ).sort_values("logged_at")
        return log, pd.DataFrame({"id": rows["id"], "label": rows["label"].astype(int)})

    tally = Tally()
    log, labels = records(replay.assign(logged=replay["day"]))
    result, seconds = one_pass(task, spec, profile, log, "reviews", config, seed, labels)
    tally.add_clean(result, seconds, len(log))
    rng = np.random.default_rng(seed)
    low = replay[replay["rating"] <= 4]
    sizes = replay.groupby("day").size()
    days = sizes[sizes >= config.min_rows].index.sort_values().tolist()  # days tested
    for stretch in range(5):
        first = stretch * (len(days) // 5)
        chosen = days[first : first + 40]
        parts = []
        for n, day in enumerate(chosen):
            own = replay[replay["day"] == day]
            if n >= FAULT_DAY:  # 80% of the day's reviews drawn from ratings 1-4
                k = round(0.8 * len(own))
                drawn = low.sample(k, random_state=int(rng.integers(2**31)))
                own = pd.concat([drawn, own.sample(len(own) - k, random_state=n)])
            parts.append(own.assign(logged=START + pd.Timedelta(days=n), day=day))
        shifted = pd.concat(parts).drop_duplicates("id").reset_index(drop=True)
        log, labels = records(shifted)
        result, _ = one_pass(task, spec, profile, log, "reviews", config, seed, labels)
        fault = START + pd.Timedelta(days=FAULT_DAY)
        tally.add_shift("changed text mix (80% ratings 1-4)", result, fault, pd.Timedelta("1D"))
    return tally


# ---------------------------------------------------------------------- image (digits)


def digits(seed: int, quick: bool) -> Tally:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    params = load_params(ROOT / "params.yaml", ["task=digits"])
    task = Watched(params.plugin)
    spec = task.new_feature_spec(params)
    pixels = spec.feature_columns
    data = load_digits()
    frame = pd.DataFrame(data.data, columns=pixels)
    labels = data.target.astype(str)
    config = settings()
    tally = Tally()
    per_window = 28  # 447 pool images: 15 windows, and a 16th (untested) that completes them
    for s in range(8 if quick else 60):
        rng = np.random.default_rng([seed, s])
        order = rng.permutation(len(frame))
        train, test, pool = order[:900], order[900:1350], order[1350:]
        model = LogisticRegression(max_iter=300).fit(frame.iloc[train] / 16, labels[train])
        predicted = model.predict(frame.iloc[test] / 16)
        profile = label_profile(task, spec, frame.iloc[train], predicted, labels[test], config)
        windows = -(-len(pool) // per_window)
        log = {
            "keys": [f"d{seed}-{s}-{i}" for i in pool],
            "times": spread(windows, per_window)[: len(pool)],
            "truth": labels[pool],
        }
        images = frame.iloc[pool].reset_index(drop=True)
        predicted = model.predict(images / 16)
        result, seconds, n = labelled_pass(
            task, spec, profile, "digits", images, config, seed, predicted=predicted, **log
        )
        tally.add_clean(result, seconds, n)
        if s >= (4 if quick else 20):  # shifts on the first replays
            continue
        dim = images.copy()
        later = np.arange(len(dim)) >= (FAULT_DAY // 2) * per_window
        dim.loc[later, pixels] = np.round(dim.loc[later, pixels] * 0.75)
        predicted = model.predict(dim / 16)
        result, _, _ = labelled_pass(
            task, spec, profile, "digits", dim, config, seed, predicted=predicted, **log
        )
        fault = START + pd.Timedelta(days=FAULT_DAY // 2)
        tally.add_shift("dimmer scans (pixels x0.75)", result, fault, pd.Timedelta("1D"))
    return tally


# ---------------------------------------------------------------------- tabular


def table(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """A stationary table in time order: `load` and `price` AR(1) (0.97, 0.9 per row),
    `noise` iid, `region` a Markov chain that stays with probability 0.98, `plan` iid; the
    class from a logistic model of them."""

    def ar(phi: float) -> np.ndarray:
        shocks = rng.normal(0, math.sqrt(1 - phi * phi), rows)
        out = np.empty(rows)
        out[0] = rng.normal()
        for t in range(1, rows):
            out[t] = phi * out[t - 1] + shocks[t]
        return out

    regions = np.array(["north", "south", "east", "west"])
    state = np.empty(rows, dtype=int)
    state[0] = rng.integers(4)
    moves, to = rng.random(rows) < 0.02, rng.integers(0, 4, rows)
    for t in range(1, rows):
        state[t] = to[t] if moves[t] else state[t - 1]
    load, price, noise = ar(0.97), ar(0.9), rng.normal(0, 1, rows)
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.5, 0.3, 0.2])
    logit = 1.2 * load - 0.8 * price + 0.6 * noise + np.array([0.5, -0.5, 0.0, 0.3])[state]
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(rows)], "load": load, "price": price, "noise": noise}
        | {"region": regions[state], "plan": plan, "churned": y}
    )


def encode(rows: pd.DataFrame, dummies: pd.Index) -> np.ndarray:
    """The classifier's inputs: the numbers and the categories one-hot (`dummies`)."""
    cats = pd.get_dummies(rows[["region", "plan"]]).reindex(columns=dummies, fill_value=0)
    return np.hstack([rows[["load", "price", "noise"]].to_numpy(), cats.to_numpy(float)])


def tabular(seed: int, quick: bool) -> Tally:
    from sklearn.linear_model import LogisticRegression

    from loopline.tasks.tabular.task import TabularSettings, TabularTask

    section = TabularSettings(
        target="churned", numeric=["load", "price", "noise"], categorical=["region", "plan"]
    )
    task = Watched(TabularTask().bind(section))
    config = settings()
    tally = Tally()
    per_day, days = 48, 60

    for s in range(3 if quick else 16):
        rng = np.random.default_rng([seed, 1000 + s])
        rows = table(5_000 + 2_000 + per_day * days, rng)
        reference, test = rows.iloc[:5_000], rows.iloc[5_000:7_000]
        replay = rows.iloc[7_000:].reset_index(drop=True)
        dummies = pd.get_dummies(reference[["region", "plan"]]).columns
        x = encode(reference, dummies)
        model = LogisticRegression(max_iter=300).fit(x, reference["churned"])
        predicted = model.predict(encode(test, dummies))
        profile = label_profile(task, None, reference, predicted, test["churned"], config)

        def run(live: pd.DataFrame, model=model, dummies=dummies, profile=profile) -> tuple:
            return labelled_pass(
                task,
                None,
                profile,
                "tabular",
                live.drop(columns="churned"),
                config,
                seed,
                keys=live["id"],
                times=spread(days, per_day),
                predicted=model.predict(encode(live, dummies)),
                truth=live["churned"],
            )

        result, seconds, n = run(replay)
        tally.add_clean(result, seconds, n)
        if s >= (2 if quick else 8):  # shifts on the first replays
            continue
        later = np.arange(len(replay)) >= FAULT_DAY * per_day
        fault = START + pd.Timedelta(days=FAULT_DAY)
        offset = replay.copy()
        offset.loc[later, "noise"] += 0.6
        result, _, _ = run(offset)
        tally.add_shift("offset of an iid number (+0.6)", result, fault, pd.Timedelta("1D"))
        flipped = replay.copy()
        north = later & (flipped["region"] == "north").to_numpy()
        flip = {"yes": "no", "no": "yes"}
        flipped.loc[north, "churned"] = flipped.loc[north, "churned"].map(flip)
        result, _, _ = run(flipped)
        tally.add_shift("concept drift (one region flipped)", result, fault, pd.Timedelta("1D"))
    return tally


# ---------------------------------------------------------------------- report


def report(family: str, summary: dict, rate: float) -> None:
    print(
        f"\n{family}: {summary['replays']} clean replays, {summary['predictions']} predictions, "
        f"{summary['seconds_per_10k']:.2f} s per 10,000"
    )
    print(f"  {'signal (column)':38s} {'windows':>7s} {'over':>5s} {'rate':>7s} {'95% CI':>15s}")
    for key, c in summary["clean"].items():
        name = key if ":" not in key else "  " + key.split(":", 1)[1]
        ci = f"[{c['low']:.4f}, {c['high']:.4f}]" if ":" not in key else ""
        print(
            f"  {name:38s} {c['windows']:7d} {c['over']:5d} {c['rate']:7.4f} {ci:>15s} "
            f"{c['verdict']}"
        )
    for name, signals in summary["shifts"].items():
        print(f"  shift: {name}")
        for signal, p in signals.items():
            delay = "-" if p["median_delay"] is None else f"{p['median_delay']:.0f}"
            print(
                f"    {signal:20s} detected {p['detected']}/{p['replays']} within "
                f"{DETECT_WITHIN} windows, median delay {delay}, windows over after the "
                f"fault {p['power']:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer replays, no text")
    parser.add_argument("--reviews", type=Path, default=ROOT.parent / "shared/data/reviews_dev.tsv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = settings()
    rate = config.false_alarm_rate
    print(
        f"monitor: period {config.period}, false_alarm_rate {rate} per period and signal, "
        f"min_rows {config.min_rows}, min_periods {config.min_periods}, "
        f"{config.calibration_draws} calibration draws; shifts from window {FAULT_DAY + 1} "
        f"(image: {FAULT_DAY // 2 + 1}). PASS: rate <= {rate} and upper 95% <= {2 * rate}"
    )
    started = time.perf_counter()
    families = {
        "forecast (solar)": lambda: solar(args.seed, args.quick),
        "image (digits)": lambda: digits(args.seed, args.quick),
        "tabular (synthetic)": lambda: tabular(args.seed, args.quick),
    }
    if not args.quick and args.reviews.exists():
        families["text (reviews)"] = lambda: reviews(args.reviews, args.seed)
    elif not args.quick:
        print(f"(no {args.reviews}: the text family is skipped)")
    results = {}
    for family, run in families.items():
        began = time.perf_counter()
        results[family] = run().summary(rate)
        results[family]["wall_s"] = time.perf_counter() - began
        report(family, results[family], rate)
    verdicts = [
        (c["verdict"], f"{family} {signal}: {c['verdict']}")
        for family, r in results.items()
        for signal, c in r["clean"].items()
        if c["verdict"]
    ]
    counts = {word: sum(v.startswith(word) for v, _ in verdicts) for word in ("PASS", "MISS")}
    print(
        f"\ncells: {counts['PASS']} PASS, {counts['MISS']} MISS, "
        f"{len(verdicts) - sum(counts.values())} with under {CELL} windows"
        + "".join(f"\n  {line}" for v, line in verdicts if v != "PASS")
    )
    print(f"wall {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rate": rate, "families": results}, indent=1))


if __name__ == "__main__":
    main()
