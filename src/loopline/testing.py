"""The contract test kit: check any task against the task contract on a tiny frame.

    from loopline.testing import check_task

    def test_my_task_keeps_the_contract():
        check_task("tasks.my_task:MyTask")

`check_task` takes a task (an import path, a built-in or entry-point name, a `Task` class or
instance), builds its params (defaults, or a params.yaml, plus fast settings: one epoch, one
thread), and runs each part of the contract the offline flow and the service rely on, in
their order, on a frame it is given or generates from the task's schema and rules
(`sample_rows`):

| part       | what is checked                                                            |
|------------|----------------------------------------------------------------------------|
| contract   | class attributes and methods, schema types and columns, split kind, the    |
|            | default search space names exactly the hyperparameters                     |
| params     | the task's own params section validates                                    |
| frame      | a frame is given, or one is generated from the schema and rules            |
| rules      | the rows pass `validate_rows` (schema types, the task's rules)             |
| features   | feature spec, features, labels; the split fills train, val and test; the   |
|            | fitted spec survives JSON (it is embedded in the ONNX model)               |
| model      | a model builds from the search space's first point                         |
| examples   | train/val/test examples: x, y, keys of one length, none empty, the same    |
|            | shapes in every set (but the model's dynamic axes)                         |
| training   | one short epoch gives finite losses                                        |
| evaluation | `evaluate` scores the model on the test rows and decides; reports are files |
| export     | ONNX export with parity (`export_and_check`); its feature spec reads back  |
| serving    | through the task's `Serving` adapter, an ONNX-backed model answers one     |
|            | item per test row, each a valid `Response` (and the stream takes them)     |

Every failure is reported with the part it breaks; a part that needs a failed one is
skipped, saying which. `check_task` raises `ContractViolation` (an AssertionError) listing
them all; `contract_report` returns the report instead.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from loopline.config import (
    SHARED_SECTIONS,
    Dimension,
    Params,
    Section,
    apply_overrides,
    check_space,
)
from loopline.offline.evaluate import Evaluation
from loopline.offline.export import export_and_check
from loopline.offline.features import FeatureSpec, build_features
from loopline.offline.labeling import Examples
from loopline.offline.split import split_and_fit
from loopline.offline.train import fit, initial_model
from loopline.offline.validate import validate_rows
from loopline.online.adapter import Answer, Serving, items_from_rows
from loopline.online.models import LoadedModel, ModelLoadError, check_model
from loopline.onnx_runtime import SPEC_KEY, embedded_spec, onnx_session
from loopline.params import params_model
from loopline.tasks import get_task
from loopline.tasks.base import Task, contract_problems

SETS = ("train", "val", "test")
SCHEMA_TYPES = ("float", "string", "datetime")
# Enough to run every stage once, quickly: one epoch on one thread, a small golden batch.
FAST: dict[str, Any] = {
    "train": {"max_epochs": 1, "patience": 1, "threads": 1},
    "export": {"golden_batch": 8},
}
SERVED_ROWS = 16  # request items sent through the serving adapter
STREAMED_ROWS = 200  # test rows streamed (and made into request items) at most


# ---------------------------------------------------------------------- the report


@dataclass
class Check:
    part: str
    status: Literal["passed", "failed", "skipped"]
    detail: str = ""


@dataclass
class ContractReport:
    """What `check_task` found, part by part."""

    task: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.status == "skipped"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def status(self, part: str) -> str | None:
        return next((c.status for c in self.checks if c.part == part), None)

    def __str__(self) -> str:
        lines = [f"task {self.task}: contract {'kept' if self.passed else 'broken'}"]
        for check in self.checks:
            detail = f": {check.detail}" if check.detail else ""
            lines.append(f"  {check.status.upper():7s} {check.part}{detail}")
        return "\n".join(lines)


class ContractViolation(AssertionError):
    """A task breaks the contract; `report` holds every part's outcome."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(str(report))
        self.report = report


class _Broken(Exception):
    """A part found the task breaking it (the message names what)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Broken(message)


def _explain(error: BaseException) -> str:
    """An error as one line, with the deepest place it came from."""
    if isinstance(error, _Broken):
        return str(error)
    text = f"{type(error).__name__}: {error}".strip()
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


# ---------------------------------------------------------------------- public entry points


def check_task(
    task: str | type[Task] | Task,
    frame: pd.DataFrame | None = None,
    params: Params | str | Path | dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    overrides: Iterable[str] = (),
    rows: int = 200,
    items: Callable[[pd.DataFrame], list[Any]] | None = None,
    seed: int = 0,
) -> ContractReport:
    """Check `task` against the contract (see the module docstring); raise
    `ContractViolation` naming every part it breaks, else return the report (which lists
    skipped parts, such as serving for a task without an adapter).

    `frame`: raw rows in the task's schema (default: `sample_rows`, `rows` of them).
    `params`: a `Params`, a params.yaml path (its folder is the project root) or a raw
    mapping; `overrides` are `section.key=value` texts applied on top. `items` turns raw
    rows into request items for the serving check (default: matching the request type's
    fields with the rows' columns). `root` is the project folder a task module is
    imported from (default: the params file's folder, or the working directory)."""
    report = contract_report(
        task, frame, params, root=root, overrides=overrides, rows=rows, items=items, seed=seed
    )
    if not report.passed:
        raise ContractViolation(report)
    return report


def contract_report(
    task: str | type[Task] | Task,
    frame: pd.DataFrame | None = None,
    params: Params | str | Path | dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    overrides: Iterable[str] = (),
    rows: int = 200,
    items: Callable[[pd.DataFrame], list[Any]] | None = None,
    seed: int = 0,
) -> ContractReport:
    """`check_task` without raising: every part's outcome."""
    with tempfile.TemporaryDirectory(prefix="loopline-contract-") as folder:
        run = _ContractRun(task, frame, params, root, list(overrides), rows, items, seed)
        return run.check_all(Path(folder))


# ---------------------------------------------------------------------- generated rows


def sample_rows(
    task: Task, params: Params | None = None, rows: int = 200, seed: int = 0
) -> pd.DataFrame:
    """`rows` raw rows in the task's schema that its rules accept, as text and numbers:
    values from an `in_set` rule are taken in turn (so every class is there), numbers in
    a `between` rule's range, other numbers standard normal; key texts are unique; times
    run hourly per group (the first key column that has a set of values)."""
    rng = np.random.default_rng(seed)
    schema = task.schema_for(params) if params is not None else task.schema
    rules = task.rules(params) if params is not None else []
    sets, ranges = _domains(rules)
    group = next((c for c in task.key_columns if c in sets and c != task.time_column), None)
    groups = len(sets[group]) if group else 1
    start = pd.Timestamp("2021-01-01T00:00:00Z")
    frame = {}
    for column, kind in schema.items():
        if column in sets:
            values = list(sets[column])
            frame[column] = [values[i % len(values)] for i in range(rows)]
        elif kind == "datetime":
            frame[column] = [start + pd.Timedelta(hours=i // groups) for i in range(rows)]
        elif kind == "string":
            frame[column] = [f"{column}-{i}" for i in range(rows)]
        elif column in ranges:
            low, high = ranges[column]
            frame[column] = rng.uniform(low, high, rows)
        else:
            frame[column] = rng.standard_normal(rows)
    return pd.DataFrame(frame)


def _domains(rules: list[Any]) -> tuple[dict[str, tuple], dict[str, tuple[float, float]]]:
    sets, ranges = {}, {}
    for rule in rules:
        if rule.kind == "in_set" and rule.column:
            sets[rule.column] = tuple(rule.values)
        elif rule.kind == "between":
            low = rule.min if rule.min is not None and abs(rule.min) < 1e12 else None
            high = rule.max if rule.max is not None and abs(rule.max) < 1e12 else None
            if low is None and high is None:
                continue
            low = low if low is not None else high - 2.0
            high = high if high is not None else low + 2.0
            for column in (rule.column,) if rule.column else rule.columns:
                ranges[column] = (float(low), float(high))
    return sets, ranges


def first_point(space: dict[str, Dimension]) -> dict[str, Any]:
    """The search space's first point: each axis's first choice, or the low end."""
    point = {}
    for axis, dimension in space.items():
        if dimension.choices is not None:
            point[axis] = dimension.choices[0]
        else:
            point[axis] = int(dimension.low) if dimension.integer else float(dimension.low)
    return point


def request_items(request: type, rows: pd.DataFrame) -> list[Any]:
    """Request items of type `request` (a pydantic model) from raw rows: each field takes
    the row's column of its name (or alias); columns it does not name are left out."""

    return items_from_rows(request, rows)


# ---------------------------------------------------------------------- the checks


# Each part with the parts it needs (a part runs only when those passed).
PARTS: dict[str, tuple[str, ...]] = {
    "contract": (),
    "params": ("contract",),
    "frame": ("params",),
    "rules": ("frame",),
    "features": ("rules",),
    "model": ("features",),
    "examples": ("model",),
    "training": ("examples",),
    "evaluation": ("training",),
    "export": ("training",),
    "serving": ("export",),
}


class _ContractRun:
    """One check of one task: parts in order, sharing what earlier parts made."""

    def __init__(self, task, frame, params, root, overrides, rows, items, seed) -> None:
        self.given, self.raw_frame, self.given_params = task, frame, params
        self.root = Path(root).resolve() if root is not None else None
        self.overrides, self.rows, self.items, self.seed = overrides, rows, items, seed
        self.task: Task | None = None

    def check_all(self, folder: Path) -> ContractReport:
        self.folder = folder
        report = ContractReport(_label(self.given))
        outcome: dict[str, str] = {}
        for part, needs in PARTS.items():
            missing = [n for n in needs if outcome.get(n) != "passed"]
            if missing:
                check = Check(part, "skipped", f"needs {', '.join(missing)}")
            else:
                try:
                    note = getattr(self, f"_{part}")()
                    check = Check(part, "passed", note or "")
                except _Skip as skip:
                    check = Check(part, "skipped", str(skip))
                except Exception as error:
                    check = Check(part, "failed", _explain(error))
            outcome[part] = check.status
            report.checks.append(check)
        if self.task is not None:
            report.task = self.task.name
        return report

    # -------------------------------------------------------------- contract and params

    def _contract(self) -> str:

        given = self.given
        if isinstance(given, str):
            self.task = get_task(given, self._project_root())  # names what it tried
        else:
            cls = given if isinstance(given, type) else type(given)
            problems = contract_problems(cls)
            _require(not problems, "; ".join(problems))
            self.task = given if isinstance(given, Task) else cls()
        task = self.task
        problems = contract_problems(type(task))
        if not isinstance(task.name, str) or task.name in SHARED_SECTIONS:
            problems.append(f"name {task.name!r} must be a text that is no shared section")
        try:
            check_space(task.Hyperparameters, task.default_space())
        except ValueError as error:
            problems.append(f"default_space(): {error}")
        problems += _serving_problems(type(task))
        _require(not problems, "; ".join(problems))
        return ""

    def _project_root(self) -> Path:
        if self.root is not None:
            return self.root
        if isinstance(self.given_params, str | Path):
            return Path(self.given_params).resolve().parent
        return Path.cwd()

    def _params(self) -> str:
        from pydantic import ValidationError

        given = self.given_params
        if isinstance(given, Params):
            _require(
                type(given.plugin) is type(self.task),
                f"the params given are for task {given.plugin.name!r}, not {self.task.name!r}",
            )
            raw = given.to_dict()
        elif isinstance(given, str | Path):
            import yaml

            raw = yaml.safe_load(Path(given).read_text()) or {}
        else:
            raw = copy.deepcopy(given or {})
        raw.setdefault("task", _reference(self.given))
        raw = apply_overrides(_merged(raw, FAST), self.overrides)
        try:
            self.params = params_model(self.task, str(self._project_root())).model_validate(raw)
        except ValidationError as error:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
            raise _Broken("params do not validate: " + "; ".join(problems)) from None
        # From here on, the task bound to its own section (a family's columns and labels).
        self.task = self.params.plugin
        settings = self.task.settings(self.params)
        _require(
            isinstance(settings, Section),
            f"settings(params) gave {type(settings).__name__}, not the task's Settings",
        )
        # From here on the task is the one these params configure (`Task.bind`): a family
        # takes its columns from its section, so its data contract is checked only now.
        self.task = self.params.plugin
        problems = _schema_problems(self.task)
        _require(not problems, "; ".join(problems))
        return ""

    # -------------------------------------------------------------- data

    def _frame(self) -> str:
        if self.raw_frame is not None:
            _require(isinstance(self.raw_frame, pd.DataFrame), "the frame given is no DataFrame")
            return f"{len(self.raw_frame)} rows given"
        self.raw_frame = sample_rows(self.task, self.params, self.rows, self.seed)
        return f"{len(self.raw_frame)} rows generated from the schema and rules"

    def _rules(self) -> str:

        task, params = self.task, self.params
        report = validate_rows(
            self.raw_frame,
            task.schema_for(params),
            task.rules(params),
            suite_name=f"contract-{task.name}",
        )
        limit = params.validate_.max_bad_fraction
        _require(
            len(report.good) > 0 and report.bad_fraction <= limit,
            f"{len(report.bad)} of {report.total} rows broke the schema or rules "
            f"({report.rule_failures}), above validate.max_bad_fraction={limit:g}",
        )
        self.good = report.good
        return f"{len(report.bad)} of {report.total} rows quarantined" if len(report.bad) else ""

    def _features(self) -> str:

        task, params = self.task, self.params
        frame, spec = build_features(task, self.good, params)
        _require(isinstance(spec, FeatureSpec), "new_feature_spec() gave no FeatureSpec")
        _require(spec.task == task.name, f"the feature spec names task {spec.task!r}")
        _require(isinstance(frame, pd.DataFrame), "add_features() gave no DataFrame")
        frame = task.add_labels(frame, spec, None)
        _require(isinstance(frame, pd.DataFrame), "add_labels() gave no DataFrame")
        frame, spec = split_and_fit(task, frame, spec, params)
        counts = frame["split"].value_counts()
        empty = [s for s in SETS if counts.get(s, 0) == 0]
        _require(not empty, f"the split leaves {empty} empty ({dict(counts)})")
        _require(isinstance(spec, FeatureSpec), "fit_features() gave no FeatureSpec")
        _require(
            FeatureSpec.from_json(spec.to_json(), self.task) == spec,
            "the fitted feature spec changes through JSON (it travels inside the ONNX model)",
        )
        self.frame, self.spec = frame, spec
        return ", ".join(f"{s} {counts.get(s, 0)}" for s in SETS) + " rows"

    # -------------------------------------------------------------- model

    def _model(self) -> str:
        import torch

        point = first_point(self.params.tune.search_space)
        self.start = initial_model(self.task, self.spec, point, self.params)
        model = self.start.model
        _require(isinstance(model, torch.nn.Module), "build_model() gave no torch.nn.Module")
        for method in ("predict", "exportable"):
            _require(callable(getattr(model, method, None)), f"the model has no {method}()")
        self.spec = self.start.spec
        return f"from {point}"

    def _examples(self) -> str:

        dynamic = set(self.start.model.exportable()[1])
        made = {s: self.task.examples(self.frame, self.spec, s) for s in SETS}
        problems = []
        for name, examples in made.items():
            if not isinstance(examples, Examples):
                problems.append(f"{name}: examples() gave {type(examples).__name__}")
                continue
            x, y, keys = examples.x, examples.y, examples.keys
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                problems.append(f"{name}: x and y must be numpy arrays")
                continue
            if not len(x):
                problems.append(f"{name}: no example")
            if not len(x) == len(y) == len(keys):
                problems.append(f"{name}: x, y and keys hold {len(x)}, {len(y)}, {len(keys)}")
            if x.dtype not in (np.float32, np.int64):
                problems.append(f"{name}: x is {x.dtype}, not float32 or int64")
            if y.dtype not in (np.float32, np.int64):
                problems.append(f"{name}: y is {y.dtype}, not float32 (values) or int64 (classes)")
        _require(not problems, "; ".join(problems))
        train = made["train"]
        for name in ("val", "test"):
            other = made[name]
            fixed = [a for a in range(1, train.x.ndim) if a not in dynamic]
            same = other.x.ndim == train.x.ndim and all(
                other.x.shape[a] == train.x.shape[a] for a in fixed
            )
            if not same or other.y.shape[1:] != train.y.shape[1:]:
                problems.append(
                    f"{name} x {other.x.shape} / y {other.y.shape} do not match train x "
                    f"{train.x.shape} / y {train.y.shape}"
                    + (f" (dynamic input axes: {sorted(dynamic)})" if dynamic else "")
                )
        _require(not problems, "; ".join(problems))
        self.examples = made
        return ", ".join(f"{s} x {made[s].x.shape} y {made[s].y.shape}" for s in SETS)

    def _training(self) -> str:

        params, start = self.params, self.start
        result = fit(
            start.model,
            self.examples["train"],
            self.examples["val"],
            self.spec,
            start.hparams,
            params.train,
            params.seed,
            max_epochs=1,
            fine_tuning=start.fine_tuning,
            augment=self.task.augmentation(self.spec),
        )
        epoch = result.history[-1]
        _require(
            math.isfinite(epoch.train_loss) and math.isfinite(epoch.val_loss),
            f"one epoch gave losses train {epoch.train_loss} / val {epoch.val_loss}",
        )
        self.model = result.model
        return f"train loss {epoch.train_loss:.4g}, val loss {epoch.val_loss:.4g}"

    def _evaluation(self) -> str:

        task, params = self.task, self.params
        evaluation = task.evaluate(self.frame, self.spec, self.model, params, None)
        _require(isinstance(evaluation, Evaluation), "evaluate() gave no Evaluation")
        _require("model" in evaluation.scores, "the evaluation scores no 'model'")
        metrics = evaluation.metrics()
        _require(all(isinstance(v, float) for v in metrics.values()), "metrics must be floats")
        folder = self.folder / "report"
        folder.mkdir()
        files = task.evaluation_report(
            evaluation, self.frame, self.spec, self.model, params, folder
        )
        missing = [str(f) for f in files if not Path(f).is_file()]
        _require(not missing, f"evaluation_report() names files that are not there: {missing}")
        decision = "promote" if evaluation.decision.promote else "hold"
        return f"model {evaluation.scores['model'].headline()} ({decision})"

    def _export(self) -> str:

        params = self.params
        golden = self.task.examples(self.frame, self.spec, "val").x[: params.export.golden_batch]
        _require(len(golden) >= 2, f"the val split gives {len(golden)} example(s); export needs 2")
        path = self.folder / "model.onnx"
        parity = export_and_check(
            self.model,
            golden,
            path,
            {SPEC_KEY: self.spec.to_json()},
            params.export.parity_atol,
            params.export.parity_rtol,
        )
        self.session = onnx_session(path)
        _require(
            embedded_spec(self.session, self.task) == self.spec,
            "the exported spec reads back changed",
        )
        try:  # what a model published without a golden batch is checked on at load
            check_model(self.session, self.spec, self.folder / "no-golden", task=self.task)
        except ModelLoadError as error:
            raise ContractViolation(f"probe_input(spec): {error}") from None
        return f"parity max |diff| {parity.max_abs_diff:.2g} on {parity.rows} rows"

    # -------------------------------------------------------------- serving

    def _serving(self) -> str:

        adapter = getattr(self.task, "Serving", None)  # a bound family: its own types
        if adapter is None:
            raise _Skip(
                f"task {self.task.name!r} declares no `Serving` adapter (a "
                "loopline.online.adapter.Serving subclass): the service cannot serve it"
            )
        model = LoadedModel(
            name=self.task.name,
            version="contract",
            alias="contract",
            session=self.session,
            spec=self.spec,
            providers=self.session.get_providers(),
            loaded_at=datetime.now(UTC).isoformat(),
        )
        serving = adapter(self.task, self.params)
        rows = self.frame[self.frame["split"] == "test"]
        rows = rows[[c for c in self.task.schema_for(self.params) if c in rows.columns]]
        items, lines = self._requests(serving, adapter, rows, model), []
        if adapter.StreamLine is not None:
            lines = self._stream_lines(serving, adapter, rows)
        _require(items, "no request item from the test rows (Serving.requests made none)")
        for item in items:
            serving.check(item, model)
        answers = serving.predict(model, items)
        problems = _answer_problems(adapter, items, answers, Answer)
        json.dumps(serving.describe(model), default=str)  # /metadata is JSON
        if adapter.StreamLine is not None:
            state = serving.open_stream(model)
            ready = []
            for line, item in enumerate(lines, start=1):
                now, _events = state.push(line, item)
                ready += [item for _, item in now]
            if ready:
                streamed = serving.predict(model, ready)
                problems += [
                    f"stream: {p}" for p in _answer_problems(adapter, ready, streamed, Answer)
                ]
        _require(not problems, "; ".join(problems))
        return f"{len(answers)} answers for {len(items)} items"

    def _requests(self, serving, adapter, rows: pd.DataFrame, model) -> list[Any]:
        """The `/predict` items for test rows: `check_task(items=...)`'s, else the
        adapter's own (`Serving.requests`)."""
        try:
            if self.items:
                return self.items(rows.head(SERVED_ROWS))
            # The adapter says what clients send for rows (say, several rows per item).
            return serving.requests(rows.head(STREAMED_ROWS), model)[:SERVED_ROWS]
        except Exception as error:
            made_by = (
                "check_task(items=...)"
                if self.items
                else _made_by(
                    adapter, "requests", "one item per row, each field from the column of its name"
                )
            )
            raise _Broken(
                f"cannot build {adapter.Request.__name__} items from test rows with "
                f"{made_by} ({_explain(error)})"
            ) from None

    def _stream_lines(self, serving, adapter, rows: pd.DataFrame) -> list[Any]:
        """The `/stream` lines for test rows (`Serving.stream_lines`)."""
        try:
            return serving.stream_lines(rows.head(STREAMED_ROWS))
        except Exception as error:
            made_by = _made_by(
                adapter,
                "stream_lines",
                "one line per row, each field from the column of its name; it does not call "
                "`requests()`",
            )
            raise _Broken(
                f"cannot build {adapter.StreamLine.__name__} stream lines from test rows with "
                f"{made_by} ({_explain(error)})"
            ) from None


def _made_by(adapter: type, method: str, default: str) -> str:
    """Who made the items: the adapter's own method, or the default one (what it does and
    what to override)."""

    if getattr(adapter, method) is not getattr(Serving, method):
        return f"{adapter.__name__}.{method}()"
    return (
        f"the default Serving.{method}() ({default}): override {method}() in "
        f"{adapter.__name__} to make them from rows of your data"
    )


class _Skip(Exception):
    """A part that does not apply to this task (the message says why)."""


def _answer_problems(adapter, items, answers, answer_type) -> list[str]:
    if len(answers) != len(items):
        return [f"predict() answered {len(answers)} of {len(items)} items"]
    problems = []
    for position, answer in enumerate(answers):
        if not isinstance(answer, answer_type):
            problems.append(f"item {position}: answer is {type(answer).__name__}, not Answer")
        elif answer.error:
            problems.append(f"item {position}: error answer {answer.response}")
        else:
            try:
                adapter.Response.model_validate(answer.response)
            except Exception as error:
                problems.append(f"item {position}: response is no {adapter.Response.__name__}")
                problems.append(_explain(error))
    return problems[:6]


def _schema_problems(task: Task) -> list[str]:
    schema = getattr(task, "schema", None)
    if not isinstance(schema, dict) or not schema:
        return ["schema must map column names to types"]
    problems = [
        f"schema: column {c!r} has type {k!r}, not one of {list(SCHEMA_TYPES)}"
        for c, k in schema.items()
        if k not in SCHEMA_TYPES
    ]
    keys = list(getattr(task, "key_columns", []) or [])
    if not keys or not set(keys) <= set(schema):
        problems.append(f"key_columns {keys} must be columns of the schema")
    if getattr(task, "target_column", None) not in schema:
        problems.append(f"target_column {task.target_column!r} is not a column of the schema")
    if task.time_column is not None and schema.get(task.time_column) != "datetime":
        problems.append(f"time_column {task.time_column!r} is not a datetime column")
    if task.split_kind not in ("chronological", "stratified", "grouped"):
        problems.append(f"split_kind {task.split_kind!r} is not chronological/stratified/grouped")
    if task.split_kind == "chronological" and task.time_column is None:
        problems.append("a chronological split needs a time_column")
    return problems


def _serving_problems(cls: type) -> list[str]:
    from pydantic import BaseModel

    adapter = getattr(cls, "Serving", None)
    if adapter is None:
        return []  # reported as a skipped serving part
    if not (isinstance(adapter, type) and issubclass(adapter, Serving)):
        return ["Serving must subclass loopline.online.adapter.Serving"]
    problems = []
    for name in ("Request", "Response"):
        kind = getattr(adapter, name, None)
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            problems.append(f"Serving.{name} must be a pydantic model")
    return problems


def _label(task: Any) -> str:
    if isinstance(task, str):
        return task
    cls = task if isinstance(task, type) else type(task)
    return getattr(cls, "name", cls.__qualname__)


def _reference(task: Any) -> str:
    if isinstance(task, str):
        return task
    cls = task if isinstance(task, type) else type(task)
    return f"{cls.__module__}:{cls.__qualname__}"


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


__all__ = [
    "Check",
    "ContractReport",
    "ContractViolation",
    "check_task",
    "contract_report",
    "first_point",
    "request_items",
    "sample_rows",
]
