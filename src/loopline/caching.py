"""Stage cache keys: what a stage's output depends on, as one stable hash per stage.

A stage's key is its data (the snapshot version, or the key of the stage before it), its own
params section and the code version. Keys chain, so changing the features section
invalidates every stage after features, while changing only `export` re-runs only export.
Prefect stores each stage's result under its key (`pipelines/offline.py`): a rerun after a
crash or a failure reuses completed stages and produces the same artifacts.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from loopline.config import Params

# Stages in order, with the params sections each one reads (beyond the stage before it).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "features": ("task", "seed", "features"),
    "labeling": ("labeling",),
    "split": ("split",),
    "tune": ("tune", "train"),  # trials train models: the train knobs shape their losses
    "train": ("train",),
}


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def code_version() -> str:
    """A hash of the library's source: any edit to a stage's code (or the code it calls)
    gives new keys. The whole package is hashed rather than a stage's module: stages share
    helpers, and a stale cache costs far more than a recomputed stage."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_keys(
    params: Params, snapshot_version: str, init_from: str | None = None, code: str | None = None
) -> dict[str, str]:
    """The cache key of every data-driven stage, for this snapshot and these params;
    `init_from` is the pinned model training starts from (an alias resolved to a version,
    so a moved alias means new keys)."""
    values = params.to_dict()
    code = code or code_version()
    keys: dict[str, str] = {}
    upstream = snapshot_version
    for stage, sections in STAGE_SECTIONS.items():
        own = {name: values.get(name) for name in sections}
        if stage == "features":
            # The task's own section (say, `solar`) defines what its features mean.
            own[params.task_name] = values.get(params.task_name)
        if stage == "tune" and init_from is not None:
            own["init_from"] = init_from
        keys[stage] = upstream = f"{stage}-{_digest(upstream, own, code)}"
    keys["export"] = f"export-{_digest(keys['train'], values.get('export'), code)}"
    return keys


def evaluate_key(train_key: str, params: Params, champion_version: str | None) -> str:
    """Evaluation compares with the current champion: a rollback between a crash and its
    resume means a fresh comparison."""
    return f"evaluate-{_digest(train_key, params.to_dict().get('evaluate'), champion_version)}"


def batch_key(batch_id: str, stage: str) -> str:
    """Ingest, validate and snapshot define the data version, so they cannot be keyed on it:
    they are keyed on the batch, which a resumed flow run keeps."""
    return f"{stage}-{batch_id}"
