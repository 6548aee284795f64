"""Lineage: the code version a run came from."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit sha, dirty flag) of the repository at `root`; ("unknown", False) outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            # data.dvc is the pipeline's own output (the data version is tagged apart), so
            # it does not make the code dirty.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!*.dvc"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return sha, bool(status.strip())
