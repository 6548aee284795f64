"""Orchestration overhead: the Prefect + MLflow flow vs the same stages as plain functions.

Run: .venv/bin/python benchmarks/pipeline_overhead.py [--quick] [-P section.key=value ...]
(or `make bench`). Both runs use the project's params.yaml (the default pipeline), each in
a fresh project folder with its own state, one after the other in this process; heavy
libraries are imported before either clock starts. Prints both wall times and the ratio
(target: flow / plain <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "solar.sites=[greensboro]",
    "ingest.end=2021-04-01",
    "tune.n_trials=2",
    "tune.max_epochs=2",
    "train.max_epochs=3",
]


def fresh_project(base: Path, name: str) -> Path:
    root = base / name
    root.mkdir(exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def plain_pipeline(root: Path, overrides: list[str]) -> dict:
    """The flow's stages as direct library calls: no Prefect, no MLflow."""
    from loopline.offline import datastore
    from loopline.offline.export import export_and_check
    from loopline.offline.features import build_features
    from loopline.offline.ingest import batch_watermarks, fetch_new_rows
    from loopline.offline.split import split_and_fit, test_view, without_test
    from loopline.offline.train import plot_learning_curves, train_model
    from loopline.offline.tune import tune_model
    from loopline.offline.validate import check_bad_fraction, validate_rows
    from loopline.onnx_runtime import SPEC_KEY
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks.forecast.scoring import evaluate_candidate
    from loopline.tasks.forecast.windows import make_windows

    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file, overrides)
    task = params.plugin
    store = datastore.SnapshotStore(paths.snapshots(params.task_name))
    rows, _ = fetch_new_rows(params, task, root, store.watermarks())
    report = validate_rows(rows, task.schema, task.rules(params), params.task_name)
    datastore.write_quarantine(report.bad, paths.quarantine / params.task_name, "plain")
    check_bad_fraction(report, params.validate_.max_bad_fraction, "quarantine")
    store.commit(report.good, batch_watermarks(rows, task), {})
    datastore.ensure_dvc_repo(root, paths.dvc_remote)
    datastore.track_data(root, paths.data)
    frame, spec = build_features(task, store.load(), params)
    frame = task.add_labels(frame, spec)
    frame, spec = split_and_fit(task, frame, spec, params)
    training = without_test(frame, task.time_column)
    tuned = tune_model(task, training, spec, params)
    result, spec = train_model(task, training, spec, tuned.best_hparams, params)
    plot_learning_curves(result, paths.runs / "curves.png")
    evaluation = evaluate_candidate(
        task,
        test_view(frame, task.time_column, task.history_span(params, spec)),
        spec,
        result.model,
        params,
    )
    val = make_windows(training, spec, spec.options.window, target_set="val", history_sets=("gap",))
    export_and_check(
        result.model,
        val.x[: params.export.golden_batch],
        paths.runs / "model.onnx",
        {SPEC_KEY: spec.to_json()},
        params.export.parity_atol,
        params.export.parity_rtol,
    )
    return evaluation.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and search (smoke)")
    parser.add_argument("-P", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs, order alternating; medians are reported",
    )
    args = parser.parse_args()
    overrides = (QUICK if args.quick else []) + args.overrides

    base = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)  # each project keeps its own embedded state
    from loopline.paths import ProjectPaths, apply_environment

    flow_paths = ProjectPaths.at(fresh_project(base, "flow"))
    apply_environment(flow_paths)
    # Import what both sides use before any clock starts.
    import great_expectations  # noqa: F401
    import mlflow  # noqa: F401
    import torch  # noqa: F401
    from prefect import flow

    from loopline.params import load_params
    from loopline.registry import ensure_experiment
    from pipelines.offline import offline_flow

    # One-time costs a scheduled pipeline pays once, not per run: the local Prefect API
    # starting on a fresh home, and MLflow migrating a fresh database. Timed apart.
    started = time.perf_counter()
    flow(name="warm-up")(lambda: None)()
    prefect_start_s = time.perf_counter() - started
    started = time.perf_counter()
    params = load_params(flow_paths.params_file, overrides)
    ensure_experiment(
        flow_paths.tracking_uri(), params.experiment_name, flow_paths.local_artifact_root()
    )
    mlflow_start_s = time.perf_counter() - started

    # First calls in a process pay one-off costs (the ONNX exporter's tracing machinery,
    # Great Expectations' context): pay them on a tiny warm-up so neither side carries them.
    plain_pipeline(
        fresh_project(base, "warm-up"),
        [*QUICK, "ingest.end=2021-02-01", "tune.n_trials=1", "train.max_epochs=1"],
    )

    plain_times, flow_times = [], []
    for i in range(args.repeat):
        # Alternate which side goes first so neither always runs on a warmer machine.
        for side in ("plain", "flow") if i % 2 == 0 else ("flow", "plain"):
            root = fresh_project(base, f"{side}-{i}")
            if side == "flow":  # its MLflow database exists already, as in steady state
                ensure_experiment(
                    ProjectPaths.at(root).tracking_uri(),
                    params.experiment_name,
                    ProjectPaths.at(root).local_artifact_root(),
                )
            started = time.perf_counter()
            if side == "plain":
                plain_metrics = plain_pipeline(root, overrides)
                plain_times.append(time.perf_counter() - started)
            else:
                summary = offline_flow(root=str(root), overrides=overrides)
                flow_times.append(time.perf_counter() - started)
    plain_s, flow_s = statistics.median(plain_times), statistics.median(flow_times)

    same = abs(plain_metrics["test_rmse"] - summary["metrics"]["test_rmse"]) < 1e-6
    print()
    print(
        f"{'pipeline (median of ' + str(args.repeat) + ')':38s} {'wall s':>8s} {'test RMSE':>10s}"
    )
    print(f"{'plain functions':38s} {plain_s:8.1f} {plain_metrics['test_rmse']:10.2f}")
    print(
        f"{'Prefect flow + MLflow tracking/registry':38s} {flow_s:8.1f} "
        f"{summary['metrics']['test_rmse']:10.2f}"
    )
    print(f"ratio flow / plain: {flow_s / plain_s:.3f}  (target <= 1.10)")
    print(f"same model both ways: {same}")
    print(
        f"one-time start-up, not in the ratio: Prefect local API {prefect_start_s:.1f}s, "
        f"fresh MLflow database {mlflow_start_s:.1f}s"
    )
    print(f"config: {'quick' if args.quick else 'default params.yaml'} {overrides or ''}")
    shutil.rmtree(base, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
