"""The operator page's arithmetic: service traffic from Prometheus text, and the pictures'
binning of live predictions and monitor windows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from loopline.app.ui import facts
from loopline.app.ui.services import Scrape, parse_metrics, quantile, traffic


def histogram(endpoint: str, code: int, counts: tuple[float, float, float]) -> str:
    """BentoML's request histogram for one endpoint and status, as `/metrics` shows it."""
    name = "bentoml_service_request_duration_seconds"
    labels = f'endpoint="{endpoint}",http_response_code="{code}"'
    lines = [
        f'{name}_bucket{{{labels},le="{le}"}} {n}'
        for le, n in zip(("0.005", "0.01", "+Inf"), counts, strict=True)
    ]
    return "\n".join([*lines, f"{name}_count{{{labels}}} {counts[-1]}"])


EXPOSITION = "\n".join(
    [
        "# TYPE bentoml_service_request_duration_seconds histogram",
        histogram("/predict", 200, (60.0, 90.0, 100.0)),
        histogram("/predict", 500, (2.0, 2.0, 2.0)),
        histogram("/readyz", 200, (500.0, 500.0, 500.0)),
        "# TYPE loopline_predictions_total counter",
        'loopline_predictions_total{api="predict",version="2"} 100.0',
        "",
    ]
)


def test_traffic_counts_requests_errors_and_buckets_but_not_probes():
    scrape = parse_metrics(EXPOSITION, at=10.0)
    assert scrape.requests == 102 and scrape.errors == 2 and scrape.refused == 0
    assert scrape.buckets == {0.005: 62.0, 0.01: 92.0, math.inf: 102.0}


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does():
    buckets = {0.005: 60.0, 0.01: 90.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.005 * 50 / 60)
    assert quantile(0.75, buckets) == pytest.approx(0.005 + 0.005 * 15 / 30)
    assert quantile(0.99, buckets) == 0.01  # in +Inf: the highest finite bound
    assert quantile(0.5, {0.005: 0.0, math.inf: 0.0}) is None


def test_rates_are_taken_between_two_looks_and_a_restart_starts_over():
    first = parse_metrics(EXPOSITION, at=10.0)
    assert traffic(first, None)["rps"] is None  # one look: totals, no rate yet
    later = Scrape(at=14.0, requests=142.0, errors=2.0, refused=4.0)
    later.buckets = {0.005: 62.0, 0.01: 132.0, math.inf: 142.0}
    seen = traffic(later, first)
    assert seen["rps"] == pytest.approx(10.0) and seen["requests"] == 40
    assert (seen["errors"], seen["refused"]) == (0, 4)
    assert seen["p50_ms"] == pytest.approx(5 + 5 * 20 / 40)  # all 40 new ones in (5, 10] ms
    restarted = Scrape(at=20.0, requests=3.0, buckets={0.005: 3.0, math.inf: 3.0})
    assert traffic(restarted, later)["requests"] == 3 and traffic(restarted, later)["rps"] is None


def test_params_are_flattened_for_the_diff():
    assert facts.flat({"train": {"epochs": 3, "lr": 0.1}, "seed": 7, "sites": ["a"]}) == {
        "train.epochs": 3,
        "train.lr": 0.1,
        "seed": 7,
        "sites": ["a"],
    }


def test_a_label_mix_is_each_labels_share_per_time_bin():
    times = pd.to_datetime(["2026-01-01T00:00Z"] * 3 + ["2026-01-02T00:00Z"] * 2)
    frame = pd.DataFrame({"time": times, "label": ["pos", "pos", "neg", "neg", "neg"]})
    mix = facts._mix(frame)
    assert mix["counts"] == {"neg": 3, "pos": 2}
    assert mix["lines"]["pos"] == pytest.approx([2 / 3, 0.0])
    assert mix["lines"]["neg"] == pytest.approx([1 / 3, 1.0])
    assert len(mix["x"]) == 2


def test_monitor_windows_become_ratio_series_with_their_alarms():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            "signal": ["live_quality"] * 3 + ["feature_drift"],
            "model_version": ["2"] * 4,
            "period_start": [start, start + pd.Timedelta("1D"), start + pd.Timedelta("2D"), start],
            "statistic": [0.5, 3.0, None, 0.2],
            "threshold": [1.0, 2.0, None, 0.4],
            "alarm": [False, True, False, False],
            "streak": [0, 2, 0, 0],
            "note": [None, "over", "too small", None],
        }
    ).sort_values("period_start")
    panel = facts._signals_json(rows)
    quality = next(s for s in panel["series"] if s["signal"] == "live_quality")
    assert quality["ratio"] == [0.5, 1.5] and quality["alarm"] == [False, True]
    assert [a["signal"] for a in panel["alarms"]] == ["live_quality"]
    assert panel["last_period"].startswith("2026-01-03")


def test_a_classifier_draws_its_label_mix_and_error_rate_where_people_labelled():
    from loopline.params import parse_params

    params = parse_params({"task": "reviews"})
    task = params.plugin
    times = pd.to_datetime(["2026-01-01T00:00Z", "2026-01-01T01:00Z", "2026-01-02T00:00Z"])
    predictions = pd.DataFrame(
        {
            "key": ["r1", "r2", "r3"],
            "origin": [None] * 3,
            "output": [{"label": "positive"}, {"label": "negative"}, {"label": "positive"}],
            "time": times,
        }
    )
    picture = task.live_picture(predictions, pd.DataFrame(), None)
    assert picture.kind == "mix"
    assert list(picture.frame["label"]) == ["positive", "negative", "positive"]
    drawn = facts._picture_json([picture])  # one mix of every review, not one per review
    assert list(drawn["keys"]) == [""] and drawn["keys"][""]["counts"] == {
        "negative": 1,
        "positive": 2,
    }
    labels = pd.DataFrame({"id": ["r1", "r3"], "label": [1, 0]})  # r3 labelled otherwise
    losses = task.live_losses(predictions, pd.DataFrame(), labels, None)
    quality = facts._quality_json(
        task, pd.DataFrame({"time": times, "loss": losses}), task.quality_name(None)
    )
    assert quality["name"] == "error_rate" and quality["known"] == 2
    assert quality["values"] == [0.0, 1.0] and quality["rows"] == [1, 1]
