"""Pictures a person can open: figures drawn off-screen and saved as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(size: tuple[float, float] = (7, 4)) -> tuple[Any, Any]:
    """A (figure, axes) pair on the non-interactive backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_figure(fig: Any, ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
