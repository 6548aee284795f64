"""Stage-by-stage progress on the console while a flow runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True, highlight=False)


@contextmanager
def stage(name: str, detail: str = "") -> Iterator[None]:
    started = time.perf_counter()
    console.print(f"[bold cyan]▶ {name}[/] {detail}")
    try:
        yield
    except Exception:
        console.print(f"[bold red]✗ {name}[/] failed after {time.perf_counter() - started:.1f}s")
        raise
    console.print(f"[green]✓ {name}[/] {time.perf_counter() - started:.1f}s")


def note(message: str) -> None:
    console.print(f"  {message}")
