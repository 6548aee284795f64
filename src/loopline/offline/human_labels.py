"""Labels from people: the batch active learning picks goes out, answers come back in.

`loopline label export` writes the batch the strategy chose (`loopline.offline.active_learning`) as
a CSV to fill in and as Label Studio tasks to import there; `loopline label import FILE` reads
either back (the CSV with its `label` column filled, or Label Studio's JSON export), checks
every answer and merges them into the labeled set under `data/labels/` — DVC-tracked, so the
next run trains on them and its data version says so.

An import is all or nothing: an unknown id, a label outside the task's classes or two
different answers for the same review (in the file, or against an earlier import) stop it
with every problem listed, row by row. Conflicts are for people to settle, never resolved
by picking one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import registry
from loopline.errors import ConfigError, LooplineError
from loopline.offline.active_learning import select
from loopline.offline.datastore import SnapshotStore, atomic_write, atomic_write_text
from loopline.online.predlog import logged_texts
from loopline.tasks.base import HumanLabels

LABELS_COLUMNS = ["id", "label", "text", "origin", "source_file", "imported_at"]


class LabelImportError(LooplineError):
    """An import refused; `problems` lists each bad answer."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{path}: {len(problems)} problem(s), nothing was imported:\n  {lines}{more}"
        )


@dataclass(frozen=True)
class Problem:
    where: str  # "row 7" of a CSV, "task 3" of a Label Studio export
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} (id {self.id}): {self.reason}"


@dataclass(frozen=True)
class ImportReport:
    added: int  # answers new to the labeled set
    unchanged: int  # answers the labeled set already held, the same
    unanswered: int  # rows of the file left without a label (skipped, not an error)
    total_labels: int  # human labels in the set after the import


def label_studio_config(class_names: list[str]) -> str:
    """The labeling interface to paste into a Label Studio project for these tasks."""
    choices = "".join(f'<Choice value="{c}"/>' for c in class_names)
    return (
        '<View><Text name="text" value="$text"/>'
        f'<Choices name="label" toName="text" choice="single">{choices}</Choices></View>'
    )


def write_batch(batch: pd.DataFrame, folder: Path, name: str) -> tuple[Path, Path]:
    """The batch (`id`, `text`, `score`, `origin`) as `<name>.csv` (a `label` column to fill
    in) and `<name>.label-studio.json` (tasks to import into Label Studio)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{name}.csv"
    table = batch[["id", "text"]].assign(label="", score=batch["score"], origin=batch["origin"])
    atomic_write(csv_path, lambda p: table.to_csv(p, index=False, encoding="utf-8"))
    tasks = [
        {
            "data": {"id": str(row.id), "text": str(row.text)},
            "meta": {"score": float(row.score), "origin": str(row.origin)},
        }
        for row in batch.itertuples()
    ]
    json_path = folder / f"{name}.label-studio.json"
    atomic_write_text(json_path, json.dumps(tasks, ensure_ascii=False, indent=1))
    return csv_path, json_path


def _label_value(raw: Any, class_names: list[str]) -> int | None:
    """A class id from `0`/`1`/`1.0` or a class name; None when it is neither."""
    text = str(raw).strip()
    if text in class_names:
        return class_names.index(text)
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and 0 <= number < len(class_names):
        return int(number)
    return None


def _domain(class_names: list[str]) -> str:
    ids = ", ".join(str(i) for i in range(len(class_names)))
    return f"{ids} or {', '.join(class_names)}"


def read_answers(path: Path, class_names: list[str]) -> tuple[pd.DataFrame, list[Problem], int]:
    """(answers: id, label, where), problems with single answers, and unanswered rows."""
    path = Path(path)
    if not path.exists():
        raise LooplineError(f"no such labels file: {path}")
    if path.suffix.lower() == ".json":
        return _read_label_studio(path, class_names)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(path, class_names)
    raise LooplineError(f"{path}: unsupported labels file (use the exported .csv or .json)")


def _read_csv(path: Path, class_names: list[str]):
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as error:
        raise LooplineError(f"cannot read {path} as CSV: {error}") from error
    missing = [c for c in ("id", "label") if c not in table.columns]
    if missing:
        raise LooplineError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    answers, problems, unanswered = [], [], 0
    for number, row in enumerate(table.itertuples(index=False), start=2):  # row 1: header
        where, review = f"row {number}", str(row.id).strip()
        if not review:
            problems.append(Problem(where, "-", "no id"))
            continue
        if not str(row.label).strip():
            unanswered += 1
            continue
        label = _label_value(row.label, class_names)
        if label is None:
            reason = f"label {row.label!r} is not one of {_domain(class_names)}"
            problems.append(Problem(where, review, reason))
            continue
        answers.append({"id": review, "label": label, "where": where})
    return pd.DataFrame(answers, columns=["id", "label", "where"]), problems, unanswered


def _read_label_studio(path: Path, class_names: list[str]):
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LooplineError(f"{path} is not a Label Studio JSON export: {error}") from error
    if not isinstance(tasks, list):
        raise LooplineError(f"{path}: a Label Studio export is a list of tasks")
    answers, problems, unanswered = [], [], 0
    for number, task in enumerate(tasks, start=1):
        where = f"task {number}"
        data = task.get("data", {}) if isinstance(task, dict) else {}
        review = str(data.get("id", "")).strip()
        if not review:
            problems.append(Problem(where, "-", "no data.id"))
            continue
        chosen = []
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue  # skipped in Label Studio: no answer
            for result in annotation.get("result") or []:
                chosen.extend((result.get("value") or {}).get("choices") or [])
        if not chosen:
            unanswered += 1
            continue
        # Several annotators each give an answer; different answers are a conflict, found
        # with the file's other duplicates.
        for choice in chosen:
            label = _label_value(choice, class_names)
            if label is None:
                reason = f"label {choice!r} is not one of {_domain(class_names)}"
                problems.append(Problem(where, review, reason))
            else:
                answers.append({"id": review, "label": label, "where": where})
    return pd.DataFrame(answers, columns=["id", "label", "where"]), problems, unanswered


class LabelStore:
    """The human labels of one task: a Parquet file under `data/labels/`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame(columns=LABELS_COLUMNS)
        return pd.read_parquet(self.path)

    def version(self) -> str | None:
        """A hash of the labels (None when there are none): part of the data version."""
        if not self.path.exists():
            return None
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def add(self, rows: pd.DataFrame) -> None:
        merged = pd.concat([self.load(), rows[LABELS_COLUMNS]], ignore_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a crash mid-write leaves the previous labels whole.
        atomic_write(self.path, lambda p: merged.to_parquet(p, index=False))


def check_answers(
    answers: pd.DataFrame,
    known: pd.DataFrame,
    existing: pd.DataFrame,
    class_names: list[str],
) -> tuple[pd.DataFrame, list[Problem]]:
    """Answers that may be merged (one per id), and the problems of the others.

    `known` holds the ids people may label (id, text, origin); `existing` the labels merged
    before. Repeating the same answer is fine; differing answers are a conflict.
    """
    problems = []
    known_ids = set(known["id"].astype(str))
    for row in answers.itertuples():
        if row.id not in known_ids:
            problems.append(Problem(row.where, row.id, "unknown id: not in the pool or the data"))
    answers = answers[answers["id"].isin(known_ids)]
    for review, group in answers.groupby("id", sort=True):
        if group["label"].nunique() > 1:
            given = ", ".join(
                f"{class_names[int(r.label)]} ({r.where})" for r in group.itertuples()
            )
            problems.append(
                Problem(group["where"].iloc[0], review, f"conflicting answers: {given}")
            )
    before = dict(zip(existing["id"].astype(str), existing["label"].astype(int), strict=True))
    single = answers.drop_duplicates(["id", "label"])
    single = single[single.groupby("id")["label"].transform("nunique") == 1]
    for row in single.itertuples():
        earlier = before.get(row.id)
        if earlier is not None and earlier != int(row.label):
            problems.append(
                Problem(
                    row.where,
                    row.id,
                    f"conflicts with the earlier label {class_names[earlier]}: "
                    f"answered {class_names[int(row.label)]}",
                )
            )
    return single.drop_duplicates("id").reset_index(drop=True), problems


def import_answers(
    path: Path, store: LabelStore, known: pd.DataFrame, class_names: list[str]
) -> ImportReport:
    """Check every answer of `path` and merge them all, or raise LabelImportError."""
    answers, problems, unanswered = read_answers(path, class_names)
    existing = store.load()
    clean, more = check_answers(answers, known, existing, class_names)
    problems = problems + more
    if problems:
        raise LabelImportError(Path(path), problems)
    already = set(existing["id"].astype(str))
    new = clean[~clean["id"].isin(already)]
    if len(new):
        info = known.drop_duplicates("id").set_index("id").loc[new["id"]]
        store.add(
            pd.DataFrame(
                {
                    "id": new["id"].to_numpy(),
                    "label": new["label"].astype(np.int64).to_numpy(),
                    "text": info["text"].astype(str).to_numpy(),
                    "origin": info["origin"].astype(str).to_numpy(),
                    "source_file": Path(path).name,
                    "imported_at": datetime.now(UTC).isoformat(),
                }
            )
        )
    return ImportReport(
        added=len(new),
        unchanged=len(clean) - len(new),
        unanswered=unanswered,
        total_labels=len(existing) + len(new),
    )


def merge_human_labels(
    frame: pd.DataFrame,
    labels: pd.DataFrame,
    key_column: str,
    target_column: str,
    text_column: str,
    group_column: str | None,
) -> pd.DataFrame:
    """Rows with people's labels filled in; labeled texts from outside the data (the
    service's prediction log) join as rows of their own (each its own group, where the
    task groups rows). `labels["label"]` holds values of the target column's own kind."""
    if labels.empty:
        return frame
    by_id = labels.drop_duplicates("id", keep="last").set_index("id")["label"]
    keys = frame[key_column].astype(str)
    out = frame.copy()
    found = keys.isin(by_id.index)
    out.loc[found, target_column] = keys[found].map(by_id).to_numpy()
    outside = labels[~labels["id"].astype(str).isin(set(keys))]
    if len(outside):
        extra = pd.DataFrame(
            {
                key_column: outside["id"].astype(str).to_numpy(),
                text_column: outside["text"].astype(str).to_numpy(),
                target_column: outside["label"].to_numpy(),
            }
        )
        if group_column is not None:
            extra[group_column] = ("labeled:" + outside["id"].astype(str)).to_numpy()
        out = pd.concat([out, extra], ignore_index=True)
    return out


def labeling_pool(task, paths, params, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Texts people may label (id, text, origin): the task's unlabeled rows (of `rows`, by
    default the snapshot) and, with `labeling.include_prediction_log`, what the service was
    asked about."""
    if not isinstance(task, HumanLabels):
        raise ConfigError(
            f"task {task.name} takes no labels from people: its labels come from the data"
        )
    if rows is None:
        rows = SnapshotStore(paths.snapshots(task.name)).load()
    if rows.empty:
        raise LooplineError(f"no {task.name} data yet: run `loopline run` first")
    pool = task.unlabeled_pool(rows)
    if params.labeling.include_prediction_log:
        logged = logged_texts(paths.prediction_log_url(params), params.served_model)
        pool = pd.concat([pool, logged[~logged["id"].isin(pool["id"])]], ignore_index=True)
    return pool


def known_texts(task, paths, params) -> pd.DataFrame:
    """Every id an answer may name: all of the task's rows and the labeling pool."""
    if not isinstance(task, HumanLabels):
        raise ConfigError(
            f"task {task.name} takes no labels from people: its labels come from the data"
        )
    rows = SnapshotStore(paths.snapshots(task.name)).load()
    data = task.unlabeled_pool(rows.assign(**{task.target_column: np.nan}))
    return pd.concat([data, labeling_pool(task, paths, params, rows)]).drop_duplicates("id")


def export_batch(
    task, paths, params, n: int, strategy: str, folder: Path
) -> tuple[pd.DataFrame, Path, Path]:
    """Choose the next `n` texts by `strategy` and write them for people (CSV + Label
    Studio); the champion scores the pool (the last registered versions vote for
    `committee`)."""
    pool = labeling_pool(task, paths, params)
    pool = pool[~pool["id"].isin(set(LabelStore(paths.labels(task.name)).load()["id"]))]
    pool = pool.reset_index(drop=True)
    if pool.empty:
        raise LooplineError("the unlabeled pool is empty: every text has a label")
    uri, name = paths.tracking_uri(), params.model_name
    probabilities = committee = None
    if strategy == "committee":
        members = registry.recent_models(uri, name, params.labeling.committee_size, paths.runs)
        if len(members) < 2:
            raise LooplineError(
                f"strategy committee needs at least 2 registered versions of {name}, "
                f"found {len(members)}: run the pipeline again or pick another strategy"
            )
        committee = np.stack([task.pool_probabilities(s, spec, pool) for s, spec in members])
        scores = committee.mean(axis=0).max(axis=1)
    elif strategy != "random":
        champion = registry.load_champion(uri, name, paths.runs / "label-export")
        if champion is None:
            raise LooplineError(
                f"strategy {strategy} needs a champion of {name} to score the pool: run "
                "`loopline run` first, or use --strategy random"
            )
        probabilities = task.pool_probabilities(champion[0], champion[1], pool)
        scores = probabilities.max(axis=1)
    else:
        scores = np.full(len(pool), np.nan)
    chosen = select(
        strategy,
        n,
        probabilities=probabilities,
        committee=committee,
        pool_size=len(pool),
        seed=params.seed,
    )
    # `score`: the top class probability the model gave (the lower, the less sure).
    batch = pool.iloc[chosen].assign(score=scores[chosen]).reset_index(drop=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    csv_path, json_path = write_batch(batch, folder, f"{task.name}-{stamp}-{strategy}")
    return batch, csv_path, json_path
