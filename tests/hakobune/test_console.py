"""Progress and consoles: the same calls work whether a bar is shown (rich, on a terminal) or not."""

from __future__ import annotations

import sys

import pytest
from rich.progress import Progress

from hakobune import console as console_module
from hakobune.console import progress


def _use(enabled: bool) -> tuple[object, float, float | None]:
    """Drive a bar the way the commands do; (the bar, completed, total) of its task."""
    with progress(enabled) as bar:
        task = bar.add_task("sealing", total=None, rate="")
        bar.advance(task, 3)
        bar.update(task, rate="3 patients/s")
        bar.update(task, completed=10, total=20, rate="")
        bar.advance(task)
        return bar, bar.tasks[0].completed, bar.tasks[0].total


def test_a_quiet_bar_counts_without_rich() -> None:
    bar, completed, total = _use(False)
    assert not isinstance(bar, Progress)
    assert (completed, total) == (11, 20)


def test_on_a_terminal_the_bar_is_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar, completed, total = _use(True)
    assert isinstance(bar, Progress)
    assert (completed, total) == (11, 20)


def test_consoles_are_made_on_first_use(capsys: pytest.CaptureFixture[str]) -> None:
    lazy = console_module._LazyConsole(stderr=True)
    assert lazy._made is None
    lazy.print("hello")
    assert lazy._made is not None and lazy.real() is lazy._made
    assert "hello" in capsys.readouterr().err
