"""Which rows a model learned from, and the rows a champion may fairly be scored on.

Every published version carries its `Membership` (`membership.json.gz` beside the model):
the keys of its train, val and test sets, or, for a chronological split, each series' time
range per set. A retrained candidate is compared with the champion only on its test rows
the champion never trained or validated on (`comparison_rows`): a champion re-scored on
rows it learned from looks better than it is, and a better candidate would never be
promoted. A champion published before memberships were recorded is scored only on rows
ingested after its snapshot version (`SnapshotStore.keys_since`), or not at all.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from loopline.offline.features import FeatureSpec
from loopline.offline.split import SETS, key_text, time_column_of

MEMBERSHIP_FILE = "membership.json.gz"
# A candidate test row the champion learned from: in no set of this comparison. In a
# chronological split such rows become history (`gap`): later examples may still read them.
SEEN_BY_CHAMPION = "seen_by_champion"


@dataclass(frozen=True)
class Membership:
    """A model's split sets: `keys` (each set's row keys, as `split.key_text` writes them)
    or `periods` (per set, one {series columns..., start, end, rows} per series)."""

    kind: Literal["keys", "periods"]
    key_columns: list[str]
    sets: dict[str, list[Any]]

    @classmethod
    def of(cls, task, frame: pd.DataFrame, spec: FeatureSpec) -> Membership:
        """The membership of a split `frame` (labeled rows in train, val or test)."""
        if task.split_kind == "chronological":
            return cls("periods", list(task.key_columns), _periods(task, frame))
        sets = {
            s: sorted(key_text(frame[frame["split"] == s], list(task.key_columns)).unique())
            for s in SETS
        }
        return cls("keys", list(task.key_columns), sets)

    def counts(self) -> dict[str, int]:
        """Rows per set."""
        if self.kind == "keys":
            return {s: len(self.sets.get(s, [])) for s in SETS}
        return {s: int(sum(p["rows"] for p in self.sets.get(s, []))) for s in SETS}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key_columns": self.key_columns, "sets": self.sets}

    def write(self, folder: Path) -> Path:
        path = folder / MEMBERSHIP_FILE
        path.write_bytes(gzip.compress(json.dumps(self.to_dict()).encode(), mtime=0))
        return path

    @classmethod
    def read(cls, folder: Path) -> Membership | None:
        """The membership saved in a model's folder (the registry keeps it among the model's
        `extra_files`), or None (published before memberships were recorded)."""
        found = [p for p in (folder / "extra_files", folder) if (p / MEMBERSHIP_FILE).exists()]
        if not found:
            return None
        path = found[0] / MEMBERSHIP_FILE
        data = json.loads(gzip.decompress(path.read_bytes()))
        return cls(data["kind"], data["key_columns"], data["sets"])

    def learned_from(self, task, rows: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
        """Whether each row was in this model's train or val set (for a chronological
        split: at or before the end of its series' train and val periods)."""
        if self.kind == "keys":
            seen = set(self.sets.get("train", [])) | set(self.sets.get("val", []))
            return key_text(rows, self.key_columns).isin(seen).to_numpy()
        return _in_periods(rows, time_column_of(task), self.sets)


def _entity(task) -> list[str]:
    return [c for c in task.key_columns if c != task.time_column]


def _periods(task, frame: pd.DataFrame) -> dict[str, list[dict]]:
    entity, time = _entity(task), time_column_of(task)
    out: dict[str, list[dict]] = {}
    for s in SETS:
        rows = frame[frame["split"] == s]
        grouped = rows.groupby(entity, dropna=False) if entity else [((), rows)]
        periods = []
        for values, part in grouped:
            values = values if isinstance(values, tuple) else (values,)
            times = pd.to_datetime(part[time], utc=True)
            periods.append(
                {
                    **{c: str(v) for c, v in zip(entity, values, strict=True)},
                    "start": times.min().isoformat(),
                    "end": times.max().isoformat(),
                    "rows": len(part),
                }
            )
        out[s] = periods
    return out


def _in_periods(rows: pd.DataFrame, time: str, sets: dict[str, list[dict]]) -> np.ndarray:
    """Rows at or before the last time their series was trained or validated on."""
    learned = [p for s in ("train", "val") for p in sets.get(s, [])]
    if not learned:
        return np.zeros(len(rows), dtype=bool)
    entity = [k for k in learned[0] if k not in ("start", "end", "rows")]
    ends = pd.DataFrame(learned)
    ends["end"] = pd.to_datetime(ends["end"], utc=True)
    times = pd.to_datetime(rows[time], utc=True)
    if not entity:
        return (times <= ends["end"].max()).to_numpy()
    last = ends.groupby(entity)["end"].max()
    series = key_text(rows, entity) if len(entity) > 1 else rows[entity[0]].astype(str)
    index = key_text(last.reset_index(), entity) if len(entity) > 1 else last.index.astype(str)
    limit = series.map(dict(zip(index, last.to_numpy(), strict=True)))
    limit = pd.to_datetime(limit, utc=True)
    return (limit.notna() & (times <= limit)).to_numpy()


@dataclass(frozen=True)
class ChampionRows:
    """What the registry knows of the rows a champion learned from: its recorded
    `membership`, or (published before memberships were) the keys ingested after its
    snapshot version, `new_keys` (None: its snapshot is not in this snapshot's history)."""

    version: str
    membership: Membership | None = None
    new_keys: set[str] | None = None

    def learned_from(self, task, rows: pd.DataFrame, spec: FeatureSpec) -> np.ndarray | None:
        """Whether the champion may have learned from each row; None when nobody knows."""
        if self.membership is not None:
            return self.membership.learned_from(task, rows, spec)
        if self.new_keys is None:
            return None
        return ~key_text(rows, list(task.key_columns)).isin(self.new_keys).to_numpy()


@dataclass(frozen=True)
class Comparison:
    """The split frame the champion is compared on (its test rows the champion learned
    from moved out of the test set), how many test rows are left and left out, and why
    the champion cannot be compared (None when it can)."""

    frame: pd.DataFrame
    rows: int
    left_out: int
    reason: str | None = None

    def describe(self, version: str) -> str:
        if self.reason:
            return self.reason
        return (
            f"champion v{version} compared on {self.rows} test rows it never trained or "
            f"validated on ({self.left_out} test rows it had seen left out)"
        )


def comparison_rows(
    task, frame: pd.DataFrame, spec: FeatureSpec, champion: ChampionRows, min_rows: int
) -> Comparison:
    """The candidate's split `frame` with the test rows the champion learned from moved
    out of the test set (see `SEEN_BY_CHAMPION`), and whether enough remain."""
    test = (frame["split"] == "test") & frame[spec.target_column].notna()
    learned = champion.learned_from(task, frame[test], spec)
    if learned is None:
        reason = (
            f"champion v{champion.version} was published without a record of its split and "
            "its snapshot version is not in this snapshot's history: which test rows it "
            "trained on is unknown"
        )
        return Comparison(frame, int(test.sum()), 0, reason)
    seen_index = frame.index[test][learned]
    moved = "gap" if task.split_kind == "chronological" else SEEN_BY_CHAMPION
    out = frame.copy()
    out.loc[seen_index, "split"] = moved
    rows, left_out = int(test.sum()) - len(seen_index), len(seen_index)
    reason = None
    if rows < min_rows:
        reason = (
            f"only {rows} test rows are new to champion v{champion.version} ({left_out} it "
            f"trained or validated on left out), fewer than evaluate.min_comparison_rows "
            f"({min_rows}): too few to compare, the candidate is held"
        )
    return Comparison(out if reason is None else frame, rows, left_out, reason)
