import numpy as np
import pandas as pd
import pytest

from loopline.config import SplitParams
from loopline.offline.features import FeatureSpec, fit_normalization
from loopline.offline.split import chronological_split, hash_split, share_tolerance
from loopline.tasks.forecast import ForecastOptions, ForecastTask
from loopline.tasks.forecast.options import with_window
from loopline.tasks.forecast.windows import add_forecast_labels, make_windows, shifted_values


def hourly(n, site="a", start="2021-01-01", skip=()):
    times = pd.date_range(start, periods=n, freq="1h", tz="UTC")
    frame = pd.DataFrame(
        {"site_id": site, "timestamp": times, "power_w": np.arange(n, dtype=float)}
    )
    return frame.drop(index=list(skip)).reset_index(drop=True)


def spec(horizon=3):
    return FeatureSpec(
        task="forecast",
        feature_columns=["power_w"],
        target_column="power_w",
        options=ForecastOptions(
            horizon=horizon, freq="1h", group_column="site_id", time_column="timestamp"
        ),
    )


def test_shifted_values_leave_nan_across_a_missing_reading():
    frame = hourly(6, skip=[3])  # readings at hours 0,1,2,4,5
    ahead = shifted_values(frame, "power_w", 1, "site_id", "timestamp", "1h")
    assert ahead[:2].tolist() == [1.0, 2.0]
    assert np.isnan(ahead[2])  # hour 3 is missing: no label, not hour 4's value
    assert ahead[3] == 5.0


def test_labels_are_the_next_values_of_the_same_site():
    frame = pd.concat([hourly(5, "a"), hourly(5, "b").assign(power_w=lambda f: f.power_w + 100)])
    labeled = add_forecast_labels(frame, spec(horizon=2))
    a = labeled[labeled.site_id == "a"]
    assert a[["label_1", "label_2"]].iloc[0].tolist() == [1.0, 2.0]
    assert np.isnan(a["label_1"].iloc[-1])
    b = labeled[labeled.site_id == "b"]
    assert b["label_1"].iloc[0] == 101.0


def test_windows_never_span_a_gap_and_carry_their_labels():
    frame = add_forecast_labels(hourly(12, skip=[6]), spec(horizon=2))
    s = fit_normalization(spec(horizon=2), frame)
    ex = make_windows(frame, s, window=3)
    origins = ex.keys["timestamp"].dt.hour.tolist()
    # hour 6 is missing: windows ending at 4 and 5 lack labels, 7 and 8 lack history.
    assert origins == [2, 3, 9]
    assert ex.x.shape == (3, 3, 1)
    assert ex.y[0].tolist() == [3.0, 4.0]


def test_chronological_split_keeps_a_gap_between_sets():
    frame = hourly(1000)
    out = chronological_split(frame, SplitParams(), "timestamp", pd.Timedelta("24h"))
    order = out["split"].tolist()
    first = {name: order.index(name) for name in ("train", "val", "test")}
    assert first["train"] < first["val"] < first["test"]
    val_start, test_start = first["val"], first["test"]
    assert set(order[val_start - 24 : val_start]) == {"gap"}
    assert set(order[test_start - 24 : test_start]) == {"gap"}
    assert out.loc[out.split == "train", "timestamp"].max() < out.loc[
        out.split == "val", "timestamp"
    ].min() - pd.Timedelta("23h")


def test_windows_stay_inside_their_set():
    frame = add_forecast_labels(hourly(400), spec(horizon=3))
    out = chronological_split(frame, SplitParams(), "timestamp", pd.Timedelta("5h"))
    s = fit_normalization(spec(horizon=3), out[out.split == "train"])
    train = make_windows(out, s, 5, target_set="train")
    val = make_windows(out, s, 5, target_set="val", history_sets=("gap",))
    train_end = out.loc[out.split == "train", "timestamp"].max()
    assert (train.keys["timestamp"] + pd.Timedelta("3h")).max() <= train_end
    assert val.keys["timestamp"].min() >= out.loc[out.split == "val", "timestamp"].min()


def test_split_rejects_too_little_data():
    with pytest.raises(ValueError, match="empty"):
        chronological_split(hourly(10), SplitParams(), "timestamp", pd.Timedelta("24h"))


def test_a_hash_split_meets_its_shares_and_never_moves_a_row():
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(5000)], "label": [0, 1] * 2500})
    a = hash_split(frame, SplitParams(), ["id"], salt="s")
    shares = a["split"].value_counts(normalize=True)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(shares[name] - share) <= share_tolerance(len(frame), share)
    # Shuffled, grown by new rows: every old row keeps its set.
    grown = pd.concat([frame, frame.assign(id=frame["id"] + "-new")]).sample(frac=1, random_state=1)
    b = hash_split(grown, SplitParams(), ["id"], salt="s").set_index("id")["split"]
    assert (b.loc[a["id"]].to_numpy() == a["split"].to_numpy()).all()
    # Another salt is another draw.
    c = hash_split(frame, SplitParams(), ["id"], salt="other")
    assert (c["split"] != a["split"]).mean() > 0.2


def test_normalization_uses_training_rows_only():
    frame = pd.DataFrame({"power_w": [1.0, 3.0, 1000.0], "split": ["train", "train", "test"]})
    s = fit_normalization(spec(), frame[frame.split == "train"])
    assert s.mean["power_w"] == 2.0 and s.std["power_w"] == 1.0


def test_a_val_set_too_short_for_a_window_is_named_with_the_rule_and_the_knobs():
    frame = add_forecast_labels(hourly(200), spec(horizon=12))
    out = chronological_split(frame, SplitParams(), "timestamp", pd.Timedelta("10h"))
    windowed = fit_normalization(with_window(spec(horizon=12), 10), out[out.split == "train"])
    assert len(ForecastTask().examples(out, windowed, "train")) > 0
    # val holds 10 readings: fewer than an origin and its 12 readings ahead.
    with pytest.raises(
        ValueError,
        match=r"no val windows: .* the most val readings any series has is 10\. "
        r"Give val more time \(split\.val",
    ):
        ForecastTask().examples(out, windowed, "val")
