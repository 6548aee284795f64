"""`loopline run --resume <flow-run-id>`: continue an offline flow run that crashed or failed.

The same flow run is run again (Prefect's engine accepts an existing flow run, as a worker
does for a deployment's): it keeps its id and parameters, finds its MLflow run and batch by
that id, and every stage that completed is reused from the cache (`pipelines/offline.py`).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from loopline.errors import LooplineError
from loopline.offline.datastore import project_is_free
from loopline.paths import ProjectPaths
from pipelines.offline import offline_flow


class ResumeRefused(LooplineError):
    """The flow run cannot be resumed (unknown, finished, another flow, still running)."""


def parse_flow_run_id(text: str) -> UUID:
    """`text` as a flow run id, or ResumeRefused naming it (checked before Prefect starts)."""
    try:
        return UUID(text)
    except ValueError:
        raise ResumeRefused(f"--resume {text!r} is not a flow run id (a UUID)") from None


def resume_offline_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    run_id = parse_flow_run_id(flow_run_id)
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise ResumeRefused(
                f"no flow run {flow_run_id} on the Prefect API at {client.api_url}"
            ) from None
        flow_name = client.read_flow(flow_run.flow_id).name
        if flow_name != offline_flow.name:
            raise ResumeRefused(
                f"flow run {flow_run_id} is a run of {flow_name!r}, not of {offline_flow.name!r}"
            )
        state = flow_run.state
        if state is not None and state.is_completed():
            raise ResumeRefused(
                f"flow run {flow_run_id} already completed ({state.name}); nothing to resume"
            )
        paths = ProjectPaths.at(flow_run.parameters.get("root", "."))
        # A run killed with -9 still reads Running on the API; its project lock died with it.
        if not project_is_free(paths.run_lock):
            raise ResumeRefused(
                f"flow run {flow_run_id} is still running on {paths.root} "
                f"(lock {paths.run_lock} is held)"
            )
        client.set_flow_run_state(
            flow_run.id,
            Scheduled(message=f"resumed after {state.name if state else 'no state'}"),
            force=True,
        )
        flow_run = client.read_flow_run(flow_run.id)
    return run_flow(offline_flow, flow_run=flow_run, parameters=dict(flow_run.parameters))
