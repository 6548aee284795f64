"""Boundaries the code style promises, tested: shared code never names a task, and the
library never imports the orchestrator or the serving framework."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from loopline.tasks import BUILTIN

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "src" / "loopline"
# Shared code: the library outside the task packages (the library's own template, `custom`,
# included), the flows and the service.
SHARED = [LIBRARY, ROOT / "pipelines", ROOT / "serving"]
EXEMPT = [LIBRARY / "tasks"]


def shared_files() -> list[Path]:
    files = []
    for folder in SHARED:
        for path in sorted(folder.rglob("*")):
            if (
                path.suffix not in (".py", ".yaml", ".yml", ".jinja", ".md")
                or "__pycache__" in path.parts
            ):
                continue
            if not any(path.is_relative_to(exempt) for exempt in EXEMPT):
                files.append(path)
    return files


# Family tasks named by ordinary words (`text`, `image`): shared code says "text" and
# "image" in their plain sense, so for them only a reference to the task is looked for
# (`tasks.text`, `tasks/image`, `params.text`).
WORDS = {"text", "image", "forecast", "tabular"}


def task_name_pattern() -> re.Pattern[str]:
    names = [name for name in BUILTIN if name not in WORDS]
    words = [name for name in BUILTIN if name in WORDS]
    alternatives = [r"\b(" + "|".join(names) + r")\b"]
    if words:
        alternatives.append(r"\b(?:tasks|params)[./](" + "|".join(words) + r")\b")
    return re.compile("|".join(alternatives), re.IGNORECASE)


def test_no_task_name_appears_in_shared_code():
    names = task_name_pattern()
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in shared_files()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if names.search(line)
    ]
    assert len(shared_files()) > 30  # the scan reads the shared code, not nothing
    assert not found, "task names in shared code:\n" + "\n".join(found)


def test_the_library_never_imports_prefect_or_bentoml():
    """Every module of the library, imported in a fresh interpreter."""
    code = """
import importlib, json, pkgutil, sys
import loopline
names = [m.name for m in pkgutil.walk_packages(loopline.__path__, "loopline.")
         if ".templates" not in m.name]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": len(names),
                  "leaked": sorted({m.split(".")[0] for m in sys.modules}
                                   & {"prefect", "bentoml"})}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] > 40
    assert result["leaked"] == []


# Forecasting's own notions: the forecast family's (under tasks/), never the shared code's.
# Whole words and identifier parts, with their inflections ("windows", "forecaster",
# "window_start"); "frequency" is another word.
FORECAST_WORDS = re.compile(
    r"(?<![a-z])(horizon|freq|window|forecast)(s|er|ers|ing|ed)?(?![a-z])", re.IGNORECASE
)


# Lines that name an old word on purpose: the table of params keys an earlier release named
# otherwise (`monitor.window`, a span of event time), read so an older params.yaml runs.
KEPT_FOR_OLD_FILES = ["RENAMED: ClassVar[dict[str, str]] = {"]


def shared_modules() -> list[Path]:
    return [path for path in shared_files() if path.suffix == ".py"]


def test_no_shared_module_names_forecasting():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in shared_modules()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if FORECAST_WORDS.search(line) and not any(kept in line for kept in KEPT_FOR_OLD_FILES)
    ]
    assert len(shared_modules()) > 30
    assert not found, "forecasting in shared code:\n" + "\n".join(found)


def test_the_word_scan_finds_what_it_looks_for():
    hits = ["horizon: int", "spec.freq", "make_windows(", "Forecasts per step", "window_start"]
    misses = ["frequency", "frequently", "widow", "casting"]
    assert all(FORECAST_WORDS.search(text) for text in hits)
    assert not any(FORECAST_WORDS.search(text) for text in misses)
