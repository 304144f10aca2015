"""Ordered, bounded parallel map over worker processes: the one place that pattern lives."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

A = TypeVar("A")
T = TypeVar("T")
P = TypeVar("P")


def resolve_workers(workers: int) -> int:
    """``workers`` as a process count: 0 or less means one per core."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def ordered_map(
    fn: Callable[[A], T], items: Iterable[A | P], workers: int, *, passthrough: type[P] | None = None
) -> Iterator[T | P]:
    """``fn(item)`` for each item, in order, in up to ``workers`` processes (0 = one per core).

    ``fn`` must be a module-level function.  At most ``4 × workers`` items are in flight, so memory is
    bounded by a few results, not the input.  Items that are instances of ``passthrough`` are yielded as
    they are, in their place, without calling ``fn``."""
    workers = resolve_workers(workers)
    if workers <= 1:
        for item in items:
            yield item if passthrough is not None and isinstance(item, passthrough) else fn(item)  # type: ignore[arg-type]
        return
    from concurrent.futures import ProcessPoolExecutor  # only here: multiprocessing is not small to import

    with ProcessPoolExecutor(max_workers=workers) as pool:
        window: deque[Future[T] | P] = deque()
        limit = 4 * workers
        for item in items:
            if passthrough is not None and isinstance(item, passthrough):
                window.append(item)
            else:
                window.append(pool.submit(fn, item))  # type: ignore[arg-type]
            while len(window) > limit:
                head = window.popleft()
                yield head.result() if isinstance(head, Future) else head
        while window:
            head = window.popleft()
            yield head.result() if isinstance(head, Future) else head
