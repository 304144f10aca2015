"""The compiled fast paths: C extensions that setup.py builds where a compiler is at hand (the ISO-2022-JP
decoder and split, the SS-MIX2 mappers and folder walk, the FHIR export's lab section).

Each speeds up pure-Python code that stays the reference and the fallback: where one is not built, or with
``HAKOBUNE_PURE_PYTHON=1`` (all of them off, e.g. to compare), the Python code runs, slower, with the same
results."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def compiled(load: Callable[[], _T]) -> _T | None:
    """``load()``, which imports a compiled module and returns what of it the caller uses; None with
    ``HAKOBUNE_PURE_PYTHON`` set or when the module is not built."""
    if os.environ.get("HAKOBUNE_PURE_PYTHON"):
        return None
    try:
        return load()
    except ImportError:
        return None
