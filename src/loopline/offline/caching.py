"""Stage cache keys: what a stage's output depends on, as one stable hash per stage.

A stage's key is its data (the snapshot version, or the key of the stage before it), its own
params section and the code version. Keys chain, so changing the features section
invalidates every stage after features, while changing only `export` re-runs only export.
Prefect stores each stage's result under its key (`pipelines/offline.py`): a rerun after a
crash or a failure reuses completed stages and produces the same artifacts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from loopline.config import Params

# Stages in order, with the params sections each one reads (beyond the stage before it).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    # A spec may hold the labels' shape (steps ahead), so features read `labeling`.
    "features": ("task", "seed", "features", "labeling"),
    "labeling": ("labeling",),
    "split": ("split",),
    "tune": ("tune", "train"),  # trials train models: the train knobs shape their losses
    "train": ("train",),
}


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


LIBRARY = Path(__file__).resolve().parents[1]


def _pipelines_folder() -> Path | None:
    """The flows' package (`pipelines/`), found without importing it (it imports Prefect)."""
    try:
        spec = importlib.util.find_spec("pipelines")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve() if locations else None


def task_source(task: Any) -> Path | None:
    """Where the task's own code lives: the folder of its class's package (a task package
    keeps its model and helpers beside it), or its module's file for a lone module."""
    module = sys.modules.get(type(task).__module__)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    return path.parent if getattr(module, "__package__", "") else path


def code_roots(task: Any | None = None) -> list[Path]:
    """Every place whose code a stage runs: the library, the flows, and the task's own
    source when it lives outside the library (a project's task module, a plug-in)."""
    roots = [LIBRARY, _pipelines_folder()]
    own = task_source(task) if task is not None else None
    if own is not None and not any(own.is_relative_to(r) for r in roots if r is not None):
        roots.append(own)
    return [root for root in roots if root is not None]


def _root_digest(root: Path) -> str:
    """The hash of a folder's Python files (or of one file), by path relative to it: where
    the checkout happens to be does not matter."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_version(task: Any | None = None) -> str:
    """A hash of every file whose logic a stage runs (`code_roots`): any edit to a stage's
    code, or to code it calls, gives new keys. Whole folders are hashed rather than a
    stage's module: stages share helpers, and a stale cache costs far more than a
    recomputed stage (hashing takes milliseconds, so it is not cached either)."""
    digest = hashlib.sha256()
    for root in code_roots(task):
        digest.update(root.name.encode())
        digest.update(_root_digest(root).encode())
    return digest.hexdigest()[:16]


def stage_keys(
    params: Params, snapshot_version: str, init_from: str | None = None, code: str | None = None
) -> dict[str, str]:
    """The cache key of every data-driven stage, for this snapshot and these params;
    `init_from` is the pinned model training starts from (an alias resolved to a version,
    so a moved alias means new keys). The code version covers the task's own source."""
    values = params.to_dict()
    # Where the training processes run (this machine or a cluster's address) does not
    # change what they compute: a run resumed against a moved scheduler reuses its stages.
    values["train"] = {k: v for k, v in values["train"].items() if k != "launch"}
    code = code or code_version(params.plugin)
    keys: dict[str, str] = {}
    upstream = snapshot_version
    for stage, sections in STAGE_SECTIONS.items():
        own = {name: values.get(name) for name in sections}
        if stage == "features":
            # The task's own section defines what its features mean.
            own[params.task_name] = values.get(params.task_name)
        if stage == "split":
            # The margin between chronological sets may follow the search space (say, the
            # most past rows an example may read).
            own["search_space"] = values["tune"]["search_space"]
        if stage == "tune" and init_from is not None:
            own["init_from"] = init_from
        keys[stage] = upstream = f"{stage}-{_digest(upstream, own, code)}"
    keys["export"] = f"export-{_digest(keys['train'], values.get('export'), code)}"
    return keys


def evaluate_key(train_key: str, params: Params, champion_version: str | None) -> str:
    """Evaluation compares with the current champion: a rollback between a crash and its
    resume means a fresh comparison."""
    return f"evaluate-{_digest(train_key, params.to_dict().get('evaluate'), champion_version)}"


def profile_key(export_key: str, params: Params) -> str:
    """The reference profile is the exported model's outputs and the training split's
    rows, sampled to `monitor.reference_rows`, at most `monitor.max_columns` inputs."""
    monitor = params.monitor
    return f"profile-{_digest(export_key, monitor.reference_rows, monitor.max_columns)}"


def batch_key(batch_id: str, stage: str) -> str:
    """Ingest, validate and snapshot define the data version, so they cannot be keyed on it:
    they are keyed on the batch, which a resumed flow run keeps."""
    return f"{stage}-{batch_id}"
