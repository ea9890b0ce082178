"""The rich progress bar of ``collect_demos`` (moved out of ``demos.py`` to keep it short)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class _Progress(Protocol):
    finished: dict[int, bool]  # episode index -> success
    only_success: bool


@contextlib.contextmanager
def progress_bar(show: bool, env_id: str, episodes: int) -> Iterator[Callable[[_Progress], None]]:
    """A rich progress bar (episodes done, successes so far) or a no-op."""
    if not show:
        yield lambda selection: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("success {task.fields[success]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"demos {env_id}", total=episodes, success="0/0")

        def update(selection: _Progress) -> None:
            done = len(selection.finished)
            ok = sum(selection.finished.values())
            kept = ok if selection.only_success else min(done, episodes)
            bar.update(task, completed=min(kept, episodes), success=f"{ok}/{done}")

        yield update
