"""Output helpers shared by every command: rich for people (progress on stderr, only on a terminal),
plain JSON on stdout for scripts."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import orjson

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


class _LazyConsole:
    """A rich ``Console`` made on first use.  Loading rich costs ~4 MB, a tenth of the daily sync's
    memory budget, and a command that only prints JSON never needs it."""

    __slots__ = ("_made", "_stderr")

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._made: Console | None = None

    def real(self) -> Console:
        if self._made is None:
            from rich.console import Console

            self._made = Console(stderr=self._stderr)
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


_console = _LazyConsole(stderr=False)
_err_console = _LazyConsole(stderr=True)
console = cast("Console", _console)
err_console = cast("Console", _err_console)


def real_console(*, stderr: bool = False) -> Console:
    """The console itself (made now if it was not yet), where rich needs a real one or a test changes it."""
    return (_err_console if stderr else _console).real()


def print_json(obj: Any) -> None:
    """One JSON document on stdout (UTF-8, not ASCII-escaped, keys as given)."""
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


class _QuietTask:
    __slots__ = ("completed", "total")

    def __init__(self, total: float | None) -> None:
        self.completed = 0.0
        self.total = total


class _Quiet:
    """What :func:`progress` gives when nothing is shown: the same calls, counting only (rich not loaded)."""

    def __init__(self) -> None:
        self.tasks: list[_QuietTask] = []

    def add_task(self, description: str, total: float | None = 100.0, **fields: Any) -> TaskID:
        self.tasks.append(_QuietTask(total))
        return cast("TaskID", len(self.tasks) - 1)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.tasks[task_id].completed += advance

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance

    def __enter__(self) -> Progress:
        return cast("Progress", self)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def progress(enabled: bool = True) -> Progress:
    """A progress display on stderr; silent when stderr is not a terminal or ``enabled`` is False."""
    if not (enabled and sys.stderr.isatty()):
        return cast("Progress", _Quiet())
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    err = _err_console.real()
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not (enabled and err.is_terminal),
        transient=True,
    )
