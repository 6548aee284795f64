"""What a monitoring pass works with and returns: a model version's spec, profile and
registered figure (`Version`), and the pass's rows, alarms and notes (`PassResult`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from loopline.offline.reference import ReferenceProfile


@dataclass(frozen=True)
class Version:
    """What the monitor needs of one model version: its spec, its profile (None when it
    was published without one) and its registered test figure (for live quality then)."""

    spec: Any
    profile: ReferenceProfile | None
    figure: float | None = None


@dataclass
class PassResult:
    """One pass: every row it added to the monitoring table, the alarms among them, and
    what it could not test and why."""

    model_name: str
    pass_id: str
    rows: int  # predictions read
    periods: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for group in ("periods", "alarms"):
            for row in out[group]:
                for key in ("period_start", "period_end", "computed_at"):
                    if isinstance(row.get(key), datetime | pd.Timestamp):
                        row[key] = pd.Timestamp(row[key]).isoformat()
        return out

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
