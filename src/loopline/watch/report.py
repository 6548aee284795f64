"""What a person reads of a pass: a picture of each signal's statistic over its threshold
per period, one HTML page (alarms, notes, the picture, the periods), and the pass as one
MLflow run (its metrics, tags and those files).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from loopline.plots import new_figure, save_figure
from loopline.watch.result import PassResult
from loopline.watch.store import SUMMARY


def plot_pass(rows: pd.DataFrame, path: Path) -> Path:
    """Each signal's statistic over its threshold per period (1: at the threshold), alarms
    marked: the picture a person opens at 2 a.m."""
    fig, ax = new_figure((9, 4))
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else pd.DataFrame()
    groups = summary.groupby(["signal", "model_version"]) if len(summary) else []
    for (signal, version), group in groups:
        ratio = group["statistic"].astype(float) / group["threshold"].astype(float)
        starts = pd.to_datetime(group["period_start"], utc=True)
        ax.plot(starts, ratio, marker=".", label=f"{signal} v{version}")
        alarms = group["alarm"].astype(bool).to_numpy()
        if alarms.any():
            ax.scatter(starts[alarms], ratio[alarms], color="red", zorder=3, s=40)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("statistic / threshold")
    ax.set_title("Monitor: each period against its calibrated threshold (red: alarm)")
    fig.autofmt_xdate()
    return save_figure(fig, ax, path)


def report_html(result: PassResult, picture: Path, path: Path) -> Path:
    """One HTML page: the alarms, the notes, the picture and every period's signal rows."""
    rows = pd.DataFrame(result.periods)
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else rows
    image = base64.b64encode(picture.read_bytes()).decode() if picture.exists() else ""
    alarms = "".join(
        f"<li>{html.escape(a['signal'])} v{a['model_version']}: period "
        f"{pd.Timestamp(a['period_start']).isoformat()} ({html.escape(str(a['note'] or ''))})"
        "</li>"
        for a in result.alarms
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    table = summary.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(rows) else ""
    path.write_text(
        f"<html><head><meta charset='utf-8'><title>Loopline monitor: {result.model_name}"
        f"</title></head><body><h1>Monitor pass {result.pass_id}: {result.model_name}</h1>"
        f"<p>{result.rows} predictions read; {len(summary)} periods tested or passed; "
        f"{len(result.alarms)} alarms</p><h2>Alarms</h2><ul>{alarms or '<li>none</li>'}</ul>"
        f"<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>"
        f"<img src='data:image/png;base64,{image}'/><h2>Periods</h2>{table}</body></html>",
        encoding="utf-8",
    )
    return path


def write_report(result: PassResult, folder: Path) -> list[Path]:
    """The pass as `monitor.json`, `monitor.png` and `monitor.html` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "monitor.json"
    data.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    picture = plot_pass(pd.DataFrame(result.periods), folder / "monitor.png")
    return [data, picture, report_html(result, picture, folder / "monitor.html")]


def pass_metrics(result: PassResult) -> dict[str, float]:
    """What MLflow charts of a pass: periods tested, alarms, each signal's worst ratio."""
    rows = pd.DataFrame(result.periods)
    out = {"monitor_predictions": float(result.rows), "monitor_alarms": float(len(result.alarms))}
    if rows.empty:
        return out
    summary = rows[rows["feature"] == SUMMARY]
    out["monitor_periods"] = float(len(summary))
    for signal, group in summary.groupby("signal"):
        ratio = (group["statistic"].astype(float) / group["threshold"].astype(float)).dropna()
        if len(ratio):
            out[f"monitor_{signal}_max_ratio"] = float(ratio.max())
    return out


def record_pass(tracker: Any, result: PassResult, folder: Path) -> list[Path]:
    """One MLflow run per pass: its metrics, tags (alarm, signals) and report files."""
    files = write_report(result, folder)
    tracker.log_metrics(pass_metrics(result))
    signals = sorted({a["signal"] for a in result.alarms})
    tracker.set_tags(
        {
            "loopline.monitor.pass_id": result.pass_id,
            "loopline.monitor.alarm": str(result.alarm).lower(),
            "loopline.monitor.alarm_signals": ",".join(signals),
        }
    )
    for path in files:
        tracker.log_file(path, "monitor")
    return files
