"""The data store: immutable, DVC-tracked snapshot partitions under `data/`.

Each committed batch is a new Parquet partition listed in a manifest; nothing committed is
ever rewritten, so a failed or crashed run leaves the previous snapshot exactly as it was.
Files are written to a temporary name and renamed into place (atomic on one filesystem).
The data version is DVC's hash of `data/` (`data.dvc`), pushed to the configured remote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from loopline.errors import LooplineError
from loopline.offline.ingest import label_text
from loopline.offline.split import key_text


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through `write(tmp_path)` then rename onto `path`: readers see old or new, never
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


@dataclass
class Commit:
    partition: str | None
    rows: int
    total_rows: int


class SnapshotStore:
    """Append-only partitions of one task's validated rows, plus a manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest_path = folder / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"batches": []}
        return json.loads(self.manifest_path.read_text())

    def watermarks(self) -> dict[str, str]:
        """The latest time seen per group across committed batches."""
        marks: dict[str, str] = {}
        for batch in self.manifest()["batches"]:
            for group, stamp in batch.get("watermarks", {}).items():
                if group not in marks or pd.Timestamp(stamp) > pd.Timestamp(marks[group]):
                    marks[group] = stamp
        return marks

    def untimed_quarantined(self) -> set[str]:
        """Fingerprints of quarantined rows whose time did not parse: no watermark can place
        them, so they are remembered to be quarantined once, not on every run."""
        return {h for b in self.manifest()["batches"] for h in b.get("untimed_quarantined", [])}

    def version(self) -> str:
        """A hash of the committed snapshot (its manifest): equal snapshots, equal versions.

        Unlike the DVC hash of all of `data/`, it ignores quarantine files, so a run stopped by
        validation does not make the next one look like new data.
        """
        if not self.manifest_path.exists():
            return "empty"
        return hashlib.sha256(self.manifest_path.read_bytes()).hexdigest()[:16]

    def known_labels(self, columns: list[str], target: str) -> dict[str, str]:
        """Each committed row's key and its label as text (`ingest.label_text`; "" when it
        has none): a source row with a known key is new only when its label differs."""
        parts = [b["partition"] for b in self.manifest()["batches"] if b.get("partition")]
        known: dict[str, str] = {}
        for part in parts:
            frame = pd.read_parquet(self.folder / part, columns=[*columns, target])
            keys = key_text(frame, columns)
            known.update(zip(keys.tolist(), label_text(frame[target]).tolist(), strict=True))
        return known

    def keys_since(self, version: str, columns: list[str]) -> set[str] | None:
        """Keys of the rows committed after snapshot `version` (as `split.key_text` writes
        them), or None when `version` is not one this snapshot has been. The manifest only
        ever grows, so each earlier version is the hash of its first batches."""
        manifest = self.manifest()
        batches = manifest["batches"]
        for count in range(len(batches), -1, -1):
            if count == 0 and version == "empty":
                break
            earlier = json.dumps({**manifest, "batches": batches[:count]}, indent=1)
            if hashlib.sha256(earlier.encode()).hexdigest()[:16] == version:
                break
        else:
            return None

        keys: set[str] = set()
        for part in [b["partition"] for b in batches[count:] if b.get("partition")]:
            keys.update(key_text(pd.read_parquet(self.folder / part, columns=columns), columns))
        return keys

    def load(self) -> pd.DataFrame:
        parts = [b["partition"] for b in self.manifest()["batches"] if b.get("partition")]
        if not parts:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(self.folder / p) for p in parts], ignore_index=True)

    def commit(
        self, rows: pd.DataFrame, watermarks: dict[str, str], info: dict[str, Any]
    ) -> Commit:
        """Add validated rows as a new partition (none when empty) and record the batch.

        A batch with no rows and no new watermark (nothing arrived) records nothing, so the
        data version stays the same and an unchanged rerun can be recognised.
        """
        manifest = self.manifest()
        batches = manifest["batches"]
        batch_id = info.get("batch_id")
        if batch_id is not None and any(b.get("batch_id") == batch_id for b in batches):
            # A retried commit (say, after the DVC push failed) must not add the rows again.
            return Commit(None, 0, sum(b["rows"] for b in batches))
        if not len(rows) and not watermarks and not info.get("untimed_quarantined"):
            return Commit(None, 0, sum(b["rows"] for b in batches))
        partition = None
        if len(rows):
            # Named by position: an orphan left by a crash before the manifest moved is simply
            # overwritten by the next commit, so reruns never duplicate rows.
            partition = f"part-{len(batches):05d}.parquet"
            atomic_write(self.folder / partition, lambda p: rows.to_parquet(p, index=False))
        batches.append(
            {
                "partition": partition,
                "rows": len(rows),
                "watermarks": watermarks,
                "committed_at": datetime.now(UTC).isoformat(),
                **info,
            }
        )
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
        total = sum(b["rows"] for b in batches)
        return Commit(partition, len(rows), total)


class ProjectBusy(LooplineError):
    """Another offline run holds the project."""


@contextmanager
def hold_project(lock_file: Path) -> Iterator[None]:
    """Hold the project for one offline run: two runs on one snapshot store would interleave
    commits. The lock dies with its process (a kill -9 releases it), so a crashed run never
    blocks the next one, and a resume may trust that the run it continues is really gone."""
    from filelock import FileLock, Timeout

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectBusy(
            f"another offline run is working on this project (lock {lock_file}); wait for it "
            "to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


def project_is_free(lock_file: Path) -> bool:
    try:
        with hold_project(lock_file):
            return True
    except ProjectBusy:
        return False


def write_quarantine(bad: pd.DataFrame, folder: Path, batch_id: str) -> Path | None:
    """Failing rows with their reasons, as CSV people can open."""
    if bad.empty:
        return None
    return atomic_write(folder / f"{batch_id}.csv", lambda p: bad.to_csv(p, index=False))


def ensure_dvc_repo(root: Path, remote: Path) -> None:
    """Initialise DVC in `root` with a local default remote, unless already set up."""
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        logging.getLogger("dvc").setLevel(logging.WARNING)
        Repo.init(str(root), no_scm=not (root / ".git").exists())
    with Repo(str(root)) as repo, repo.config.edit() as config:
        if not config.get("core", {}).get("remote"):
            config["remote"]["local"] = {"url": str(remote)}
            config["core"]["remote"] = "local"


def track_data(root: Path, data_dir: Path, push: bool = True) -> str:
    """`dvc add` the data folder (updating `data.dvc`), push it, return its DVC hash."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        # The run reports the data version itself; DVC's "git add data.dvc" hint is noise.
        repo.scm_context.quiet = True
        repo.add([str(data_dir.resolve())])
        if push:
            repo.push()
    return data_version(root, data_dir)


def data_version(root: Path, data_dir: Path) -> str:
    """The DVC hash recorded in `<data>.dvc`, or "none" before the first snapshot."""
    pointer = root / f"{data_dir.name}.dvc"
    if not pointer.exists():
        return "none"
    outs = yaml.safe_load(pointer.read_text()).get("outs") or [{}]
    return str(outs[0].get("md5", "none")).removesuffix(".dir")
