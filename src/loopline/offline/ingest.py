"""Ingest: read rows from a source and keep only those newer than the last watermark.

Sources (`ingest.source`): `builtin:<task>`, a CSV/Parquet path or glob (relative to the
project), a SQLAlchemy URL with `ingest.query`, `live` (the rows the service answered, which
it stored in the prediction-log database: `loopline.online.live`), or, for an image task, a folder
of images with a labels CSV. Nothing is written here: rows become part
of a snapshot only after validation (see `datastore.SnapshotStore.commit`).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from loopline.config import IngestParams, Params
from loopline.errors import SourceError
from loopline.offline.split import key_text
from loopline.online.live import read_live_inputs
from loopline.paths import ProjectPaths
from loopline.tasks import Task
from loopline.tasks.base import FolderSource


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def read_sql(url: str, query: str | None) -> pd.DataFrame:
    import sqlalchemy

    if not query:
        raise SourceError(f"ingest.source is a database URL ({_mask_url(url)}): set ingest.query")
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            return pd.read_sql(sqlalchemy.text(query), connection)
    except SourceError:
        raise
    except Exception as exc:  # driver errors vary; name the source either way
        raise SourceError(f"cannot read ingest.query from {_mask_url(url)}: {exc}") from exc


LIVE = "live"


def read_live(params: Params, task: Task, root: Path) -> pd.DataFrame:
    """The input rows the service stored (`serve.store_inputs`) for this task, from the
    prediction-log database (`serve.prediction_log`), as the task's raw columns."""
    url = ProjectPaths.at(root).prediction_log_url(params)
    try:
        return read_live_inputs(url, task.name, list(task.schema_for(params)))
    except Exception as exc:  # driver errors vary; name the source either way
        raise SourceError(
            f"cannot read the live inputs (ingest.source: live) from {_mask_url(url)}: {exc}"
        ) from exc


def read_files(pattern: str, root: Path) -> pd.DataFrame:
    full = pattern if Path(pattern).is_absolute() else str(root / pattern)
    paths = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
    paths = [p for p in paths if Path(p).is_file()]
    if not paths:
        raise SourceError(f"ingest.source {pattern!r}: no such file (looked for {full})")
    frames = []
    for path in paths:
        suffix = Path(path).suffix.lower()
        try:
            if suffix in (".csv", ".tsv", ".txt"):
                # Read as text: typing is validation's job, so a bad cell is quarantined,
                # not a whole file rejected.
                frames.append(read_text_table(path, "\t" if suffix == ".tsv" else ","))
            elif suffix in (".parquet", ".pq"):
                frames.append(pd.read_parquet(path))
            else:
                raise SourceError(
                    f"ingest.source file {path}: unsupported type {suffix!r} "
                    "(use .csv, .tsv or .parquet)"
                )
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot read ingest.source file {path}: {exc}") from exc
    return pd.concat(frames, ignore_index=True)


def read_text_table(path: str, sep: str) -> pd.DataFrame:
    """A CSV/TSV file as text columns.

    pyarrow's parser reads a large file many times faster than pandas' own (a million rows
    of 20 columns: 0.4 s against 5.2 s) into the same frame. A file it refuses (a row short
    of fields, say) is read by pandas' parser as before, so such a row still reaches
    validation and is quarantined rather than stopping the run.
    """
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=True, engine="pyarrow")
    except (pd.errors.ParserError, ValueError, OSError):
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=True)


def read_source(params: Params, task: Task, root: Path) -> pd.DataFrame:
    """All rows of `params.ingest.source`, within its optional [start, end) bounds."""
    source = params.ingest.source
    if source == "builtin" or source.startswith("builtin:"):
        name = source.removeprefix("builtin").removeprefix(":") or task.name
        if name != task.name:
            raise SourceError(
                f"ingest.source {source!r} is not a built-in source of task "
                f"{task.name!r} (use builtin:{task.name})"
            )
        frame = task.load_builtin(params)
    elif source == LIVE:
        frame = read_live(params, task, root)
    elif "://" in source:
        frame = read_sql(source, params.ingest.query)
    elif (root / source).is_dir():  # an absolute `source` stays itself under `/`
        folder = root / source
        if not isinstance(task, FolderSource):
            raise SourceError(
                f"ingest.source {source!r} is a folder; task {task.name!r} reads files "
                "(CSV/TSV/Parquet) or a database, not folders (the FolderSource ability)"
            )
        frame = task.load_folder(folder, params)
    else:
        frame = read_files(source, root)
    return within_bounds(frame, params.ingest, task)


def parsed_times(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_datetime(frame[column], utc=True, errors="coerce", format="mixed")


def within_bounds(frame: pd.DataFrame, bounds: IngestParams, task: Task) -> pd.DataFrame:
    """Rows in [start, end); rows whose time does not parse are kept for validation to see."""
    column = task.time_column
    if column is None or (bounds.start is None and bounds.end is None):
        return frame
    if column not in frame.columns:
        return frame  # validation reports the missing column
    times = parsed_times(frame, column)
    keep = pd.Series(True, index=frame.index)
    if bounds.start is not None:
        keep &= ~(times < pd.Timestamp(bounds.start, tz="UTC"))
    if bounds.end is not None:
        keep &= ~(times >= pd.Timestamp(bounds.end, tz="UTC"))
    return frame[keep].reset_index(drop=True)


def row_fingerprints(frame: pd.DataFrame) -> pd.Series:
    """A stable hash of each row's raw values (as text)."""
    text = frame.astype("string").fillna("\x00")  # one spelling of "missing" for any source
    hashed = pd.util.hash_pandas_object(text, index=False)
    return hashed.map(lambda h: f"{h:016x}")


def newer_than(
    frame: pd.DataFrame,
    watermarks: dict[str, str],
    task: Task,
    seen_untimed: set[str] = frozenset(),
    known_keys: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Rows after their group's watermark (incremental ingest); for a task without a time
    column, rows whose key is not in the snapshot yet (`known_keys`: key -> label text).

    Rows whose time does not parse are kept for validation to quarantine, unless an earlier
    batch quarantined them already (`seen_untimed`).
    """
    column, group = task.time_column, task.key_columns[0]
    if column is None:
        return unseen_rows(frame, task, seen_untimed, known_keys or {})
    if column not in frame.columns or group not in frame.columns:
        return frame.reset_index(drop=True)  # validation names the missing column
    times = parsed_times(frame, column)
    marks = frame[group].astype(str).map(lambda g: watermarks.get(g))
    marks = pd.to_datetime(marks, utc=True, errors="coerce")
    untimed = times.isna()
    if seen_untimed and untimed.any():
        untimed &= ~row_fingerprints(frame).isin(seen_untimed)
    keep = untimed | (times.notna() & (marks.isna() | (times > marks)))
    return frame[keep].reset_index(drop=True)


def row_keys(frame: pd.DataFrame, task: Task) -> pd.Series:
    """Each row's key (the task's key columns joined) as text."""
    return key_text(frame, list(task.key_columns))


def label_text(values: pd.Series) -> pd.Series:
    """Labels as comparable text: a number in one spelling ("3", "3.0" and 3 are "3"), a
    missing label as ""."""
    text = values.astype("string").fillna("").str.strip().astype(object)
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce").astype(float)
    spelled = [f"{n:.12g}" if n == n else t for n, t in zip(numbers, text, strict=True)]
    return pd.Series(spelled, index=values.index, dtype=object)


def relabeled(frame: pd.DataFrame, task: Task, known: dict[str, str]) -> pd.Series:
    """Rows whose key is in the snapshot (`known`: key -> label text) with another label:
    validation quarantines them, naming both labels, rather than move or drop them
    silently."""
    target = task.target_column
    if not known or target not in frame.columns or not set(task.key_columns) <= set(frame.columns):
        return pd.Series(False, index=frame.index)
    stored = row_keys(frame, task).map(known)
    return stored.notna() & (stored != label_text(frame[target]))


def unseen_rows(
    frame: pd.DataFrame, task: Task, seen_untimed: set[str], known: dict[str, str]
) -> pd.DataFrame:
    """Rows of an untimed source not ingested before: their key is not in the snapshot (or
    is, with another label: see `relabeled`) and they are not a bad row an earlier batch
    quarantined already."""
    keep = pd.Series(True, index=frame.index)
    if seen_untimed:
        keep &= ~row_fingerprints(frame).isin(seen_untimed)
    if known and set(task.key_columns) <= set(frame.columns):
        keep &= ~row_keys(frame, task).isin(known.keys()) | relabeled(frame, task, known)
    return frame[keep].reset_index(drop=True)


def untimed_fingerprints(bad: pd.DataFrame, task: Task) -> list[str]:
    """Fingerprints of quarantined rows no watermark can place: without a parseable time,
    or every bad row of a task without a time column (see `newer_than`)."""
    column = task.time_column
    if bad.empty:
        return []
    if column is None:
        raw = bad.drop(columns=[c for c in bad.columns if c.startswith("_")])
        return sorted(row_fingerprints(raw).tolist())
    if column not in bad.columns:
        return []
    raw = bad.drop(columns=[c for c in bad.columns if c.startswith("_")])
    untimed = parsed_times(raw, column).isna()
    return sorted(row_fingerprints(raw[untimed]).tolist())


def batch_watermarks(frame: pd.DataFrame, task: Task) -> dict[str, str]:
    """The latest parseable time per group in a batch (quarantined rows included, so a bad
    row is quarantined once, not on every run)."""
    column, group = task.time_column, task.key_columns[0]
    if column is None or column not in frame.columns or group not in frame.columns:
        return {}
    times = parsed_times(frame, column)
    latest = times.groupby(frame[group].astype(str)).max().dropna()
    return {str(g): t.isoformat() for g, t in latest.items()}


def fetch_new_rows(
    params: Params,
    task: Task,
    root: Path,
    watermarks: dict[str, str],
    seen_untimed: set[str] = frozenset(),
    known_keys: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, int]:
    """The source's rows newer than `watermarks` (what this run has to add), and how many
    rows the source held in all, so a run can say how many it skipped as already seen."""
    source = read_source(params, task, root)
    return newer_than(source, watermarks, task, seen_untimed, known_keys), len(source)
