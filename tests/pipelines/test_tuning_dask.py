"""Tuning on a Dask cluster through Prefect's Dask task runner, inside the offline flow."""

from __future__ import annotations

from loopline import registry
from loopline.paths import ProjectPaths


def test_the_flow_tunes_on_a_local_dask_cluster(project, prefect_harness):
    from pipelines.offline import offline_flow

    summary = offline_flow(
        root=str(project),
        overrides=["tune.parallel.engine=dask", "tune.parallel.workers=2", "tune.n_trials=2"],
    )
    assert summary["status"] == "published"
    uri = ProjectPaths.at(project).tracking_uri()
    trials = registry.client(uri).search_runs(
        [registry.client(uri).get_run(summary["run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'",
    )
    # Both trials ran on the workers, were stored in the shared study, then logged here.
    assert sorted(r.data.tags["loopline.trial_state"] for r in trials) == ["COMPLETE"] * 2
    assert (project / ".loopline" / "optuna.db").is_file()
