"""Validate: the data contract, checked by a Great Expectations suite built from task rules.

Rows that break a rule are not dropped silently: they come back with the names of the rules
they broke, for the caller to quarantine, and the run stops when their share exceeds the
configured maximum. Great Expectations is imported lazily (it costs ~10 s).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from loopline.errors import SourceError, ValidationFailed

ROW_ID = "_row_id"
REASONS = "_reasons"


@dataclass(frozen=True)
class Rule:
    """One expectation on the data, named for people reading a quarantine file.

    kinds: `not_null`; `between` (min/max; on `column`, or on each of `columns` as one
    rule: a row breaks it when any of them is out of range); `in_set` (values); `unique`
    (no repeated `columns` key; the first reading wins); `in_order` (`column` never goes
    back in time within `group`; exact repeats are left to `unique`); `not_future`
    (`column` no later than a day from now: a mistyped year would otherwise become the
    watermark and hide every later reading); `not_blank` (a text with something besides
    whitespace); `complete` (every one of `columns` holds a value: one reason for a row,
    say an image, whose many columns are empty together). With `show_value`, an `in_set`
    reason names the value too (`label_in_labels: label='refund'`), for a set the user
    configured.
    """

    name: str
    kind: Literal[
        "not_null", "between", "in_set", "unique", "in_order", "not_future", "not_blank", "complete"
    ]
    column: str | None = None
    columns: tuple[str, ...] = ()
    group: str | None = None
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] = ()
    show_value: bool = False


@dataclass
class ValidationReport:
    good: pd.DataFrame
    bad: pd.DataFrame  # raw values of failing rows + a `_reasons` column
    rule_failures: dict[str, int]
    total: int
    ge_success: bool
    ge_statistics: dict[str, Any] = field(default_factory=dict)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / self.total if self.total else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.total,
            "good_rows": len(self.good),
            "bad_rows": len(self.bad),
            "bad_fraction": round(self.bad_fraction, 6),
            "rule_failures": dict(self.rule_failures),
            "ge_success": self.ge_success,
            "ge_statistics": self.ge_statistics,
        }


def coerce_types(frame: pd.DataFrame, schema: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    """Cast columns to the schema; values that do not parse become null and are reported."""
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise SourceError(
            f"source is missing column(s) {missing}; expected {list(schema)}, "
            f"found {list(frame.columns)}"
        )
    # Typed columns are gathered and joined once: replacing hundreds of a wide table's
    # columns one by one fragments the frame (pandas then warns at every later insert).
    columns: dict[str, pd.Series] = {}
    problems: dict[int, list[str]] = defaultdict(list)
    for column, kind in schema.items():
        raw = frame[column]
        if kind == "float":
            columns[column] = pd.to_numeric(raw, errors="coerce").astype("float64")
        elif kind == "datetime":
            columns[column] = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
        elif kind == "string":
            columns[column] = raw.astype("string")
        else:
            raise ValueError(f"unknown schema type {kind!r} for column {column!r}")
        unparsed = raw.notna() & columns[column].isna()
        for position in np.flatnonzero(unparsed.to_numpy()):
            problems[position].append(f"type:{column}={raw.iloc[position]!r} is not a {kind}")
    return pd.DataFrame(columns, index=frame.index), problems


def _derived_columns(frame: pd.DataFrame, rules: list[Rule]) -> dict[str, pd.Series]:
    """Row-level columns for rules that compare a row with earlier rows."""
    derived = {}
    for rule in rules:
        if rule.kind == "unique":
            derived[f"_{rule.name}"] = ~frame.duplicated(subset=list(rule.columns), keep="first")
        elif rule.kind == "in_order":
            assert rule.column and rule.group
            groups = frame[rule.group]
            previous_max = frame[rule.column].groupby(groups).cummax().groupby(groups).shift()
            # A missing time is `not_null`'s to report, not an ordering problem.
            derived[f"_{rule.name}"] = (
                previous_max.isna()
                | frame[rule.column].isna()
                | (frame[rule.column] >= previous_max)
            )
        elif rule.kind == "not_blank":
            text = frame[rule.column].astype("string")
            # A null text is `not_null`'s to report.
            derived[f"_{rule.name}"] = (text.str.strip().str.len() > 0).fillna(True).astype(bool)
        elif rule.kind == "between" and rule.columns:
            values = frame[list(rule.columns)]
            low = -np.inf if rule.min is None else rule.min
            high = np.inf if rule.max is None else rule.max
            inside = values.isna() | ((values >= low) & (values <= high))
            derived[f"_{rule.name}"] = inside.all(axis=1)
        elif rule.kind == "complete":
            derived[f"_{rule.name}"] = frame[list(rule.columns)].notna().all(axis=1)
        elif rule.kind == "not_future":
            limit = pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D")
            derived[f"_{rule.name}"] = frame[rule.column].isna() | (frame[rule.column] <= limit)
    return derived


def _expectation(rule: Rule) -> Any:
    import great_expectations.expectations as gxe

    meta = {"rule": rule.name}
    if rule.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=rule.column, meta=meta)
    if rule.kind == "between" and rule.column:
        return gxe.ExpectColumnValuesToBeBetween(
            column=rule.column, min_value=rule.min, max_value=rule.max, meta=meta
        )
    if rule.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(
            column=rule.column, value_set=list(rule.values), meta=meta
        )
    # unique / in_order are checked on their derived boolean column.
    return gxe.ExpectColumnValuesToBeInSet(column=f"_{rule.name}", value_set=[True], meta=meta)


def _run_suite(frame: pd.DataFrame, rules: list[Rule], suite_name: str) -> Any:
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_pandas(name=f"{suite_name}-source")
    asset = source.add_dataframe_asset(name="rows")
    batch_definition = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for rule in rules:
        suite.add_expectation(_expectation(rule))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    )


def validate_rows(
    frame: pd.DataFrame, schema: dict[str, str], rules: list[Rule], suite_name: str
) -> ValidationReport:
    """Type-check `frame` against `schema` and run `rules`; split rows into good and bad."""
    raw = frame.reset_index(drop=True)
    typed, problems = coerce_types(raw, schema)
    derived = _derived_columns(typed, rules)
    checked = pd.concat([typed, pd.DataFrame(derived, index=typed.index)], axis=1)
    checked[ROW_ID] = np.arange(len(checked))
    failures: Counter[str] = Counter()
    shown_values = {rule.name: rule.column for rule in rules if rule.show_value}
    for reasons in problems.values():
        failures.update(r.split("=")[0] for r in reasons)
    ge_success, statistics = True, {}
    if len(checked):
        result = _run_suite(checked, rules, suite_name)
        ge_success = bool(result.success)
        statistics = dict(result.statistics)
        for outcome in result.results:
            if outcome.success:
                continue
            rule = outcome.expectation_config.meta.get("rule", outcome.expectation_config.type)
            ids = [row[ROW_ID] for row in outcome.result.get("unexpected_index_list", [])]
            failures[rule] += len(ids)
            shown = shown_values.get(rule)
            for row_id in ids:
                reason = rule
                if shown is not None:  # the configured set's column: name the value too
                    reason = f"{rule}: {shown}={raw.iloc[int(row_id)][shown]!r}"
                problems[int(row_id)].append(reason)
    bad_positions = sorted(problems)
    bad = raw.iloc[bad_positions].astype("string").copy()
    bad[REASONS] = ["; ".join(dict.fromkeys(problems[p])) for p in bad_positions]
    good_mask = np.ones(len(typed), dtype=bool)
    good_mask[bad_positions] = False
    return ValidationReport(
        good=typed[good_mask].reset_index(drop=True),
        bad=bad.reset_index(drop=True),
        rule_failures=dict(failures),
        total=len(raw),
        ge_success=ge_success and not problems,
        ge_statistics=statistics,
    )


def quarantine(
    report: ValidationReport, mask: np.ndarray, reasons: list[str], rule: str
) -> ValidationReport:
    """`report` with its good rows under `mask` moved to the bad ones, each with its reason
    (a check beyond the rules: say, a key the snapshot already holds with another label)."""
    if not mask.any():
        return report
    moved = report.good[mask].astype("string").copy()
    moved[REASONS] = reasons
    failures = {**report.rule_failures, rule: report.rule_failures.get(rule, 0) + int(mask.sum())}
    return ValidationReport(
        good=report.good[~mask].reset_index(drop=True),
        bad=pd.concat([report.bad, moved], ignore_index=True),
        rule_failures=failures,
        total=report.total,
        ge_success=False,
        ge_statistics=report.ge_statistics,
    )


def check_bad_fraction(report: ValidationReport, max_bad_fraction: float, where: str) -> None:
    """Stop the run when too many rows broke the contract."""
    if report.bad_fraction > max_bad_fraction:
        top = ", ".join(f"{k}: {v}" for k, v in Counter(report.rule_failures).most_common(5))
        raise ValidationFailed(
            f"{len(report.bad)} of {report.total} rows ({report.bad_fraction:.1%}) broke the data "
            f"contract, above validate.max_bad_fraction={max_bad_fraction:g} ({top}). "
            f"The failing rows are in {where}; the data snapshot was not updated."
        )


# ----------------------------------------------------------------------------- serving time

# Kinds that compare a row with other rows of a dataset: a request holds a few rows of one
# client, so they are not checked at serving time (a stream's own duplicate and order
# checks, and the adapter's of each item, stand in for them).
DATASET_KINDS = frozenset({"unique", "in_order"})


@dataclass(frozen=True)
class Broken:
    """One rule one row broke: the rule's name (as validation quarantines under), the
    column and the value that broke it."""

    rule: str
    column: str
    value: Any

    def __str__(self) -> str:
        return f"{self.column}={_shown(self.value)} breaks {self.rule}"


def _shown(value: Any) -> str:
    if isinstance(value, np.datetime64 | datetime):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return repr(value.item() if isinstance(value, np.generic) else value)


class ServingContract:
    """A task's data contract applied to request rows, in plain numpy (no Great
    Expectations on the request path). The same rule names as validation; rules on columns
    a request does not hold (say, the label) and rules across a dataset (`DATASET_KINDS`)
    are skipped, listed in `skipped`."""

    def __init__(self, rules: list[Rule], columns: Any) -> None:
        present = set(columns)
        self.rules: list[Rule] = []
        self.skipped: dict[str, str] = {}
        for rule in rules:
            needed = [rule.column] if rule.column else list(rule.columns)
            if rule.kind in DATASET_KINDS:
                self.skipped[rule.name] = "compares rows across a dataset"
            elif not needed or any(c not in present for c in needed):
                self.skipped[rule.name] = "a request does not hold its column(s)"
            else:
                self.rules.append(rule)
        self._row_tests = [
            (rule, [rule.column] if rule.column else list(rule.columns), _value_test(rule))
            for rule in self.rules
        ]
        self._plans: dict[frozenset[str], FusedRules] = {}
        # Columns of the rules `check` may fuse (whether they hold floats is seen per call).
        self._float_candidates = list(
            dict.fromkeys(
                c
                for rule in self.rules
                if rule.kind in _FUSED_KINDS
                for c in ([rule.column] if rule.column else rule.columns)
            )
        )

    def check(self, columns: Any) -> dict[int, list[Broken]]:
        """The rules each row of `columns` (column → values, one per row; a DataFrame
        works) broke, by row position, each with the first column that broke it, in the
        rules' order; rows that broke none are left out. Vectorised: the range and presence
        rules on float columns in one numpy pass together (most of a contract, and a pass
        per rule cost more than a small request's answer), the others one pass each."""
        found: dict[int, list[tuple[int, Broken]]] = defaultdict(list)
        floats = frozenset(c for c, kind in _kinds(columns, self._float_candidates) if kind == "f")
        plan = self._plans.get(floats)
        if plan is None:
            plan = self._plans[floats] = FusedRules.of(self.rules, floats)
        if plan.pairs:
            plan.check(columns, found)
        for n, rule in enumerate(self.rules):
            if n in plan.rules:
                continue
            names = _rule_columns(rule)
            block = _block(columns, names)
            if not _breaks(rule, _distinct(block)).any():  # exact: the same values, once each
                continue
            broken = _breaks(rule, block)
            for row in np.flatnonzero(broken.any(axis=1)):
                column = int(broken[row].argmax())
                found[int(row)].append((n, Broken(rule.name, names[column], block[row, column])))
        return {
            row: [b for _, b in sorted(found[row], key=lambda f: f[0])] for row in sorted(found)
        }

    def check_row(self, row: Any) -> list[Broken]:
        """The rules one row (column → value) broke: plain Python, for one reading of a
        stream, where numpy's per-call cost would be most of the work."""
        broken = []
        for rule, columns, breaks in self._row_tests:
            for column in columns:
                if breaks(row[column]):
                    broken.append(Broken(rule.name, column, row[column]))
                    break
        return broken


# Rule kinds `ServingContract.check` tests together on float columns.
_FUSED_KINDS = frozenset({"not_null", "complete", "between"})


@dataclass(frozen=True)
class FusedRules:
    """The range and presence rules on float columns of a contract, as one test: every
    (rule, column) pair is a column of `(rows, pairs)` values with its bounds."""

    rules: frozenset[int]  # the rules' positions in the contract
    pairs: list[tuple[int, Rule, str]]
    names: list[str]  # the columns read, in order
    picks: list[int]  # each pair's column among `names`
    low: np.ndarray
    high: np.ndarray
    presence: np.ndarray  # pairs of a presence rule (broken when missing)
    # Per column of `names`, the range every one of its rules allows (the intersection): a
    # block of values all inside it breaks nothing, the common case, tested first.
    inside_low: np.ndarray
    inside_high: np.ndarray

    @classmethod
    def of(cls, rules: list[Rule], floats: frozenset[str]) -> FusedRules:
        pairs = [
            (n, rule, c)
            for n, rule in enumerate(rules)
            if rule.kind in _FUSED_KINDS and all(c in floats for c in _rule_columns(rule))
            for c in _rule_columns(rule)
        ]
        names = list(dict.fromkeys(c for _, _, c in pairs))
        between = [rule.kind == "between" for _, rule, _ in pairs]
        picks = [names.index(c) for _, _, c in pairs]
        low = np.array([_bound(rule.min, -np.inf) for _, rule, _ in pairs])
        high = np.array([_bound(rule.max, np.inf) for _, rule, _ in pairs])
        inside_low, inside_high = np.full(len(names), -np.inf), np.full(len(names), np.inf)
        np.maximum.at(inside_low, picks, low)
        np.minimum.at(inside_high, picks, high)
        return cls(
            rules=frozenset(n for n, _, _ in pairs),
            pairs=pairs,
            names=names,
            picks=picks,
            low=low,
            high=high,
            presence=~np.array(between, dtype=bool),
            inside_low=inside_low,
            inside_high=inside_high,
        )

    def check(self, columns: Any, found) -> None:
        """Add what each row broke to `found` (row → [(rule position, Broken)]): each
        rule's first broken column."""
        values = _block(columns, self.names).astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            # A missing value (NaN) is outside every range: it takes the long way too.
            if ((values >= self.inside_low) & (values <= self.inside_high)).all():
                return
        block = values[:, self.picks]
        missing = np.isnan(block)
        with np.errstate(invalid="ignore"):
            outside = ~((block >= self.low) & (block <= self.high))
        broken = np.where(self.presence, missing, ~missing & outside)
        if not broken.any():
            return
        for row in np.flatnonzero(broken.any(axis=1)).tolist():
            seen: set[int] = set()
            for pair in np.flatnonzero(broken[row]).tolist():
                n, rule, column = self.pairs[pair]
                if n not in seen:
                    seen.add(n)
                    found[row].append((n, Broken(rule.name, column, block[row, pair])))


def _kinds(columns: Any, names: list[str]) -> list[tuple[str, str]]:
    """The numpy kind of each named column of `columns`, without selecting it from a
    DataFrame (a selection per column cost more than the check for a wide one, say an
    image's)."""
    if isinstance(columns, pd.DataFrame):
        kinds = dict(zip(columns.columns, (d.kind for d in columns.dtypes), strict=True))
        return [(c, kinds[c]) for c in names]
    return [(c, np.asarray(columns[c]).dtype.kind) for c in names]


def _bound(value: float | None, default: float) -> float:
    return default if value is None else value


def _rule_columns(rule: Rule) -> list[str]:
    return [rule.column] if rule.column else list(rule.columns)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and value != value)


def _utc(value: Any) -> datetime:
    """A time as an aware datetime (naive ones are UTC, as everywhere in the project)."""
    if not isinstance(value, datetime):
        value = pd.Timestamp(value).to_pydatetime()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _block(columns: Any, names: list[str]) -> np.ndarray:
    """(rows, len(names)) values of the named columns."""
    if isinstance(columns, pd.DataFrame):
        return columns[names].to_numpy()
    if len(names) == 1:
        return np.asarray(columns[names[0]])[:, None]
    return np.column_stack([np.asarray(columns[name]) for name in names])


def _distinct(values: np.ndarray) -> np.ndarray:
    """Each value of a block once, as a column of the same kind: what a rule on single
    values breaks, it breaks there exactly when it breaks in the block (a request's key or
    category column repeats a few values over many rows). Numbers and times are kept as
    they are (their tests are one numpy pass anyway)."""
    if values.dtype.kind not in "OUS" or values.size < 2:
        return values
    try:
        distinct = list(dict.fromkeys(values.ravel().tolist()))
    except TypeError:  # unhashable values (say lists in an object column): all of them
        return values
    if len(distinct) == values.size:
        return values
    out = np.empty((len(distinct), 1), dtype=values.dtype)
    out[:, 0] = distinct
    return out


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind == "M":
        return np.isnat(values)
    return pd.isna(values)


def _breaks(rule: Rule, values: np.ndarray) -> np.ndarray:
    """Which values (rows × columns) break `rule` (a missing value breaks only `not_null` and
    `complete`, as in validation)."""
    missing = _missing(values)
    if rule.kind in ("not_null", "complete"):
        return missing
    present = ~missing
    if rule.kind == "between":
        low = -np.inf if rule.min is None else rule.min
        high = np.inf if rule.max is None else rule.max
        numbers = values.astype(np.float64)
        return present & ~((numbers >= low) & (numbers <= high))
    if rule.kind == "in_set":
        if values.dtype.kind == "O":  # texts: a set lookup each beats numpy's object isin
            allowed = set(rule.values)
            inside = np.fromiter((v in allowed for v in values.ravel()), bool, values.size)
            return present & ~inside.reshape(values.shape)
        return present & ~np.isin(values, np.asarray(rule.values))
    if rule.kind == "not_blank":
        blank = np.frompyfunc(lambda v: not str(v).strip(), 1, 1)(values).astype(bool)
        return present & blank
    if rule.kind == "not_future":
        if values.dtype.kind == "M":  # naive UTC, as the service's columns hold times
            limit = np.datetime64(time.time_ns() + _DAY_NS, "ns")
            return present & (values > limit)
        limit = datetime.now(UTC) + timedelta(days=1)
        times = pd.to_datetime(pd.Series(values.ravel()), utc=True)
        return present & (times > limit).to_numpy().reshape(values.shape)
    raise ValueError(f"rule {rule.name!r}: kind {rule.kind!r} is not checked at serving time")


_DAY_NS = 86_400 * 1_000_000_000


def _value_test(rule: Rule) -> Callable[[Any], bool]:
    """`_breaks` for one value, made once per rule (a stream checks every reading)."""
    if rule.kind in ("not_null", "complete"):
        return _is_missing
    if rule.kind == "between":
        low = -math.inf if rule.min is None else rule.min
        high = math.inf if rule.max is None else rule.max
        return lambda v: not _is_missing(v) and not low <= float(v) <= high
    if rule.kind == "in_set":
        allowed = set(rule.values)
        return lambda v: not _is_missing(v) and v not in allowed
    if rule.kind == "not_blank":
        return lambda v: not _is_missing(v) and not str(v).strip()
    if rule.kind == "not_future":
        return lambda v: not _is_missing(v) and _utc(v) > datetime.now(UTC) + timedelta(days=1)
    raise ValueError(f"rule {rule.name!r}: kind {rule.kind!r} is not checked at serving time")
