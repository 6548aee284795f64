"""The offline flow under Prefect's test harness, on tiny real data (no mocks).

One scenario per test, in order on one project: first publish, rerun with nothing new, new
data, and each failure that must leave the snapshot and the champion untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from loopline import registry
from loopline.errors import ParityError, SourceError, ValidationFailed
from loopline.offline.datastore import SnapshotStore
from loopline.offline.features import FeatureSpec
from loopline.offline.membership import Membership
from loopline.onnx_runtime import SPEC_KEY, onnx_session, run_onnx
from loopline.paths import ProjectPaths

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(root: Path, *overrides: str) -> dict:
    from pipelines.offline import offline_flow

    return offline_flow(root=str(root), overrides=list(overrides))


def state(root: Path) -> tuple[int, str | None, list]:
    """(snapshot rows, champion version, champion history) of a project."""
    paths = ProjectPaths.at(root)
    rows = len(SnapshotStore(paths.snapshots("solar")).load())
    champion = registry.champion_version(paths.tracking_uri(), "solar")
    history = registry.champion_history(paths.tracking_uri(), "solar") if champion else []
    return rows, str(champion.version) if champion else None, history


@pytest.fixture(scope="module")
def published(tmp_path_factory, prefect_harness):
    """A project after one successful run (shared by the scenarios below)."""
    import os

    from tests.conftest import TINY, write_project

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(tmp_path_factory.mktemp("flow") / "proj", TINY)
    summary = run(root)
    return root, summary


def test_first_run_publishes_a_champion_with_lineage(published):
    root, summary = published
    assert summary["status"] == "published" and summary["promoted"]
    paths = ProjectPaths.at(root)
    champion = registry.champion_version(paths.tracking_uri(), "solar")
    tags = champion.tags
    assert tags["loopline.data_version"] == summary["data_version"] != "none"
    assert tags["loopline.git_commit"] and tags["loopline.params_hash"]
    assert json.loads(tags["loopline.params"])["tune"]["n_trials"] == 2
    assert float(tags["loopline.metric.test_rmse"]) > 0
    client = registry.client(paths.tracking_uri())
    version = str(champion.version)
    assert str(client.get_model_version_by_alias("solar", "challenger").version) == version
    history = registry.champion_history(paths.tracking_uri(), "solar")
    assert [(h["from"], h["to"]) for h in history] == [(None, version)]
    assert "beats smart_persistence" in history[0]["why"]
    assert "no current champion" in history[0]["why"]
    # The pipeline run holds curves, plots, trial runs and the validation result.
    run_data = client.get_run(summary["run_id"])
    assert (
        "val_loss" in run_data.data.metrics
        and "skill_vs_smart_persistence" in run_data.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"plots", "validation", "evaluation"} <= artifacts
    trials = client.search_runs(
        [run_data.info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary['run_id']}'",
    )
    assert len(trials) == 2


def test_champion_onnx_matches_its_spec_and_serves_any_batch(published, tmp_path):
    root, _ = published
    paths = ProjectPaths.at(root)
    folder = registry.download_model(paths.tracking_uri(), "models:/solar@champion", tmp_path)
    session = onnx_session(folder / "model.onnx")
    spec = FeatureSpec.from_json((folder / "extra_files" / "feature_spec.json").read_text())
    assert json.loads(session.get_modelmeta().custom_metadata_map[SPEC_KEY]) == json.loads(
        spec.to_json()
    )
    x = np.zeros((5, spec.options.window, len(spec.feature_columns)), np.float32)
    assert run_onnx(session, x).shape == (5, spec.options.horizon)


def test_champion_carries_its_reference_profile(published, tmp_path):
    from loopline.offline.reference import ReferenceProfile

    root, _ = published
    paths = ProjectPaths.at(root)
    folder = registry.download_model(paths.tracking_uri(), "models:/solar@champion", tmp_path)
    profile = ReferenceProfile.read(folder / "extra_files")
    assert profile is not None and "power_w" in profile.features
    assert profile.features["power_w"].kind == "numeric" and profile.rows["train"] > 0
    assert set(profile.predictions) == {"forecast_mean", "forecast_step_24"}
    assert profile.quality.name == "rmse" and profile.quality.figure > 0
    assert len(profile.quality.losses) == min(profile.rows["test"], 5000)


def test_monitor_pass_reports_once_per_window(published):
    """The monitoring flow on a log of the champion's (perfect) forecasts of the last days:
    windows tested, a report in MLflow, rows in the monitoring table; a second pass finds
    nothing new to test."""
    from loopline.online.predlog import PredictionLog, PredictionRecord
    from loopline.params import load_params
    from loopline.watch.monitor import MonitoringStore
    from pipelines.monitoring import monitoring_flow

    root, _ = published
    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file)
    champion = registry.champion_version(paths.tracking_uri(), "solar").version
    rows = SnapshotStore(paths.snapshots("solar")).load().sort_values(["site_id", "timestamp"])
    rows = rows[rows["timestamp"] >= rows["timestamp"].max() - pd.Timedelta("6D")]
    writer = PredictionLog(paths.prediction_log_url(params))
    for site, series in rows.groupby("site_id"):
        power = series["power_w"].to_numpy()
        for n, reading in enumerate(series.to_dict("records")[:-24]):
            reading["timestamp"] = reading["timestamp"].isoformat()
            writer.put(
                PredictionRecord(
                    "solar",
                    str(champion),
                    "forecast",
                    site,
                    pd.Timestamp(reading["timestamp"]).to_pydatetime(),
                    {"readings": 24, "last": reading},
                    [float(v) for v in power[n + 1 : n + 25]],
                )
            )
    writer.close()
    first = monitoring_flow(root=str(root))
    assert first["periods"] >= 4 and first["predictions"] > 100
    assert not [a for a in first["alarms"] if a["signal"] == "live_quality"]
    run = registry.client(paths.tracking_uri()).get_run(first["mlflow_run_id"])
    assert run.data.tags["loopline.monitor.alarm"] in ("true", "false")
    artifacts = registry.client(paths.tracking_uri()).list_artifacts(run.info.run_id, "monitor")
    assert {Path(a.path).name for a in artifacts} == {"monitor.json", "monitor.png", "monitor.html"}
    second = monitoring_flow(root=str(root))
    assert second["periods"] == 0
    table = MonitoringStore(paths.prediction_log_url(params)).rows("solar")
    assert not table.duplicated(["model_version", "signal", "feature", "period_start"]).any()


def test_rerun_with_nothing_new_does_not_train(published):
    root, first = published
    before = state(root)
    summary = run(root)
    assert summary["status"] == "nothing new"
    assert str(summary["version"]) == first["version"]
    assert "nothing new" in summary["message"]
    assert state(root) == before


def test_missing_source_is_named_and_changes_nothing(published):
    root, _ = published
    before = state(root)
    with pytest.raises(SourceError, match=r"incoming/missing\.csv"):
        run(root, "ingest.source=incoming/missing.csv")
    assert state(root) == before


def test_too_many_bad_rows_quarantine_and_stop(published):
    root, _ = published
    before = state(root)
    from loopline.params import parse_params
    from loopline.tasks import get_task

    params = parse_params({"solar": {"sites": ["greensboro"]}})
    march = get_task("solar").load_builtin(params)
    march = march[(march.timestamp >= "2021-03-01") & (march.timestamp < "2021-03-08")]
    march = march.assign(timestamp=march.timestamp.astype(str)).astype(str)
    march.loc[march.index[:40], "power_w"] = "-999"  # 40 of 168 rows out of range
    (root / "incoming").mkdir(exist_ok=True)
    march.to_csv(root / "incoming" / "march.csv", index=False)
    with pytest.raises(ValidationFailed, match="power_w_in_range: 40"):
        run(root, "ingest.source=incoming/march.csv", "ingest.end=null")
    assert state(root) == before
    quarantined = list((root / "data" / "quarantine" / "solar").glob("*.csv"))
    assert quarantined
    bad = pd.read_csv(quarantined[-1])
    assert len(bad) == 40 and set(bad["_reasons"]) == {"power_w_in_range"}


def test_parity_failure_publishes_nothing(published):
    root, _ = published
    _, champion, history = state(root)
    with pytest.raises(ParityError, match="nothing was published"):
        # A changed param means a real retrain; an impossible tolerance fails the check.
        run(root, "export.parity_atol=1e-12", "export.parity_rtol=0")
    client = registry.client(ProjectPaths.at(root).tracking_uri())
    latest = registry.latest_version(ProjectPaths.at(root).tracking_uri(), "solar")
    assert str(latest.version) == champion
    assert state(root)[1:] == (champion, history)
    assert str(client.get_model_version_by_alias("solar", "challenger").version) == champion


def test_a_failure_after_new_data_keeps_the_champion_and_the_rerun_adds_no_row(published, capsys):
    root, _ = published
    rows_before, champion, history = state(root)
    # New rows are validated and committed, then the run fails at export.
    with pytest.raises(ParityError):
        run(root, "ingest.end=2021-03-08", "export.parity_atol=1e-12", "export.parity_rtol=0")
    rows_after, champion_after, history_after = state(root)
    assert rows_after == rows_before + 7 * 24  # the validated rows are kept...
    assert (champion_after, history_after) == (champion, history)  # ...the champion is not moved
    capsys.readouterr()
    summary = run(root, "ingest.end=2021-03-08")  # rerun: nothing ingested twice
    assert summary["new_rows"] == 0 and summary["status"] == "published"
    assert state(root)[0] == rows_after
    # Only export's params changed: the stages before it are reused from the failed run.
    printed = capsys.readouterr().err
    for stage_name in ("features", "labeling", "split", "tune", "train", "evaluate"):
        block = printed.split(f"▶ {stage_name}", 1)[1].split("✓", 1)[0]
        assert "reused" in block, f"{stage_name} was redone:\n{block}"
    assert "reused" not in printed.split("▶ export", 1)[1].split("✓", 1)[0]


def test_new_data_publishes_a_challenger_and_gates_the_champion(published):
    root, first = published
    rows_before, champion, history = state(root)
    summary = run(root, "ingest.end=2021-03-15")
    assert summary["status"] == "published" and summary["new_rows"] == 7 * 24
    rows_after, new_champion, new_history = state(root)
    assert rows_after == rows_before + 7 * 24  # no row ingested twice
    assert int(summary["version"]) > int(champion)
    client = registry.client(ProjectPaths.at(root).tracking_uri())
    challenger = client.get_model_version_by_alias("solar", "challenger")
    assert str(challenger.version) == summary["version"]
    # The gate's decision follows from the scores on the same rows and the paired test
    # against the champion (evaluate.gate: paired), and the alias follows it.
    metrics = summary["metrics"]
    beats_all = all(
        metrics["test_rmse"] < metrics[f"{name}_rmse"]
        for name in ("champion", "persistence", "smart_persistence")
    )
    test = summary["decision"]["test"]
    assert summary["decision"]["rule"] == "paired" and test["method"] == "diebold-mariano"
    assert summary["promoted"] == (beats_all and test["p_value"] < test["alpha"])
    # A forecaster's sets are periods: the candidate's test period starts after the last
    # hour the champion trained or validated on, so it was scored on no period it learned.
    old, new = periods(root, champion), periods(root, summary["version"])
    learned_until = max(pd.Timestamp(p["end"]) for s in ("train", "val") for p in old.sets[s])
    assert min(pd.Timestamp(p["start"]) for p in new.sets["test"]) > learned_until
    assert summary["decision"]["comparison_rows"] == new.counts()["test"]
    if summary["promoted"]:
        assert new_champion == summary["version"]
        assert new_history[-1]["from"] == champion and new_history[-1]["to"] == summary["version"]
        assert new_history[-1]["gate"]["p_value"] == test["p_value"]
    else:
        assert new_champion == champion and new_history == history
    assert summary["data_version"] != first["data_version"]
    dvc_pointer = yaml.safe_load((root / "data.dvc").read_text())
    assert dvc_pointer["outs"][0]["md5"].startswith(summary["data_version"])


def periods(root: Path, version: str) -> Membership:
    paths = ProjectPaths.at(root)
    folder = registry.download_model(
        paths.tracking_uri(), f"models:/solar/{version}", paths.runs / f"membership-{version}"
    )
    found = Membership.read(folder)
    assert found is not None and found.kind == "periods"
    return found


def test_rerun_after_a_validation_failure_is_still_nothing_new(published):
    root, _ = published
    before = state(root)
    late = pd.DataFrame(
        {
            "site_id": "greensboro",
            "timestamp": ["2021-03-20 00:30+00:00"],
            "ghi": "x",
            "dni": "0",
            "dhi": "0",
            "temp_air": "5",
            "wind_speed": "1",
            "power_w": "0",
        }
    )
    (root / "incoming").mkdir(exist_ok=True)
    late.to_csv(root / "incoming" / "late.csv", index=False)
    with pytest.raises(ValidationFailed):
        run(root, "ingest.source=incoming/late.csv", "ingest.end=null")
    # The quarantine file is new under data/, but the snapshot is not: nothing to retrain.
    assert run(root, "ingest.end=2021-03-15")["status"] == "nothing new"
    assert state(root) == before


def test_a_run_can_start_from_a_registered_forecaster(published):
    """`train.init_from` on the solar task: the LSTM/GRU and head are v1's (same horizon:
    nothing is fresh), frozen below the head, and inputs scaled as v1 learned them."""
    import torch

    from loopline.offline.transfer import load_source

    root, first = published
    uri = ProjectPaths.at(root).tracking_uri()
    summary = run(root, "train.init_from=models:/solar/1", "train.transfer.mode=freeze")
    assert summary["status"] == "published", summary
    tags = registry.client(uri).get_run(summary["run_id"]).data.tags
    assert tags["loopline.init_from"] == f"models:/solar/1 (run {first['run_id']})"
    assert (tags["loopline.transfer.copied"], tags["loopline.transfer.fresh"]) == (
        "head,rnn",
        "",
    )
    source = load_source("models:/solar/1", uri, root / "scratch-v1")
    tuned = load_source(f"runs:/{summary['run_id']}", uri, root / "scratch-new")
    assert tuned.spec.mean == source.spec.mean and tuned.spec.std == source.spec.std
    # ... not this data's own statistics, which a fit on it (v2, same snapshot) gives.
    refit = load_source("models:/solar/2", uri, root / "scratch-v2")
    assert refit.spec.mean != source.spec.mean
    for key, value in source.state_dict.items():
        if key.startswith("rnn."):
            assert torch.equal(tuned.state_dict[key], value), key
    assert not torch.equal(tuned.state_dict["head.weight"], source.state_dict["head.weight"])
    # Same data, same params, same pinned source: nothing new.
    assert (
        run(root, "train.init_from=models:/solar/1", "train.transfer.mode=freeze")["status"]
        == "nothing new"
    )

    # An alias is pinned per run: with the same data and params, a moved alias trains again.
    by_alias = ("train.init_from=models:/solar@champion", "train.transfer.mode=freeze")
    assert run(root, *by_alias)["status"] == "published"
    assert run(root, *by_alias)["status"] == "nothing new"
    champion = str(registry.champion_version(uri, "solar").version)
    other = "1" if champion != "1" else "2"
    registry.move_champion(uri, "solar", other, "test: the alias moves", action="promote")
    moved = run(root, *by_alias)
    assert moved["status"] == "published", moved
    tags = registry.client(uri).get_run(moved["run_id"]).data.tags
    assert tags["loopline.init_from"].startswith(f"models:/solar/{other} (run ")
