"""One benchmark script loaded by another, by path (benchmarks are scripts, not a package).

`benchmarks/serving.py` holds the seeded forecaster, the service runner and the load
helpers that the other serving benchmarks share; imported by name it would be the service
package `serving`, so it is loaded from its file under a name of its own.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent


def serving_benchmark() -> ModuleType:
    """benchmarks/serving.py as the module `serving_bench` (loaded once per process)."""
    loaded = sys.modules.get("serving_bench")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("serving_bench", BENCHMARKS / "serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def published_project(prefix: str) -> Path:
    """A fresh project in a temporary folder (`serving.py`'s PROJECT) whose champion is
    `serving.py`'s seeded GRU, with this process pointed at it (its MLflow and state)."""
    import yaml

    from loopline.paths import ProjectPaths, apply_environment

    bench = serving_benchmark()
    root = Path(tempfile.mkdtemp(prefix=prefix)) / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(bench.PROJECT, sort_keys=False))
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)
    apply_environment(ProjectPaths.at(root))
    bench.publish_model(root)
    return root
