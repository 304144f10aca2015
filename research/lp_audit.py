"""The disclosure audit: what an attacker can infer about each suppressed cell from everything released.

The model is the attacker's: unknown non-negative counts ``z`` for the *atoms* (the finest cells every
table released about the same units is a sum of — see research.disclosure), and one linear equation
``sum(z over the cell's atoms) = value`` for every value ever published about those units (all releases
of the study).  For each suppressed cell the audit minimises and maximises its sum subject to those
equations (scipy ``linprog``, HiGHS); that is the cell's feasible range.  A cell is *protected* when it
holds a count from 1 to 9: its range must cover the protection interval [0, 10] — the released figures
must be consistent both with the cell being empty and with it being at the publication threshold, so the
attacker cannot tell that it holds a small count, nor narrow it to within 1..9.

Counts are integers, the LP is their relaxation, and a relaxation can only be *wider*.  So a bound is
accepted only when the optimal vertex is integral (then the integer problem has the same optimum); when it
is not, the bound is recomputed with integrality (scipy ``milp``).  The release step refuses to write any
output whose audit fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import sparse  # type: ignore[import-untyped]
from scipy.optimize import Bounds, LinearConstraint, linprog, milp  # type: ignore[import-untyped]

#: A protected cell's feasible range must reach down to this ...
PROTECT_LOW = 0
#: ... and up to this (the smallest count that may be published).
PROTECT_HIGH = 10

_INT_TOL = 1e-6


class InconsistentRelease(Exception):
    """The published values admit no non-negative solution (they were not computed from one dataset)."""


@dataclass(frozen=True)
class SuppressedCell:
    """A cell that was not published: its atoms, and whether it holds a sensitive count (1..9)."""

    label: str
    atoms: npt.NDArray[np.int64]
    protected: bool


@dataclass(frozen=True)
class CellRange:
    label: str
    low: float
    high: float
    protected: bool
    relaxed: bool  # True when an LP bound was fractional and the integer bound was computed instead

    @property
    def ok(self) -> bool:
        return not self.protected or (
            self.low <= PROTECT_LOW + _INT_TOL and self.high >= PROTECT_HIGH - _INT_TOL
        )

    def to_json(self) -> dict[str, object]:
        return {
            "cell": self.label,
            "low": self.low,
            "high": None if math.isinf(self.high) else self.high,
            "protected": self.protected,
            "ok": self.ok,
        }


@dataclass
class AuditReport:
    ranges: list[CellRange] = field(default_factory=list)
    programs: int = 0  # linear (and integer) programs solved

    @property
    def failures(self) -> list[CellRange]:
        return [r for r in self.ranges if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def protected(self) -> int:
        return sum(1 for r in self.ranges if r.protected)

    def narrowest(self) -> tuple[float, float] | None:
        """(highest lower bound, lowest upper bound) over the protected cells."""
        prot = [r for r in self.ranges if r.protected]
        if not prot:
            return None
        return max(r.low for r in prot), min(r.high for r in prot)


def audit(
    n_atoms: int,
    published: sparse.csr_matrix | sparse.csr_array,
    values: npt.NDArray[np.float64] | Sequence[float],
    suppressed: Sequence[SuppressedCell],
) -> AuditReport:
    """The feasible range of every suppressed cell given the published equations ``published @ z =
    values``, ``z >= 0``.  Raises :class:`InconsistentRelease` if the equations have no solution."""
    a_eq = sparse.csr_matrix(published, dtype=np.float64)
    b_eq = np.asarray(values, dtype=np.float64)
    if a_eq.shape != (len(b_eq), n_atoms):
        raise ValueError(f"published has shape {a_eq.shape}, expected ({len(b_eq)}, {n_atoms})")
    report = AuditReport()
    # An atom in no published equation can take any non-negative value: a cell holding one is unbounded
    # above, and a cell made only of such atoms can be 0.  (Exact, and it saves most programs when a
    # whole line is suppressed.)
    free = np.diff(a_eq.tocsc().indptr) == 0
    for cell in suppressed:
        atoms = np.asarray(cell.atoms, dtype=np.int64)
        c = np.zeros(n_atoms)
        c[atoms] = 1.0
        relaxed_low = relaxed_high = False
        if len(atoms) and free[atoms].all():
            low = 0.0
        else:
            low, relaxed_low = _bound(c, a_eq, b_eq, report)
        if len(atoms) and free[atoms].any():
            high = math.inf
        else:
            neg_high, relaxed_high = _bound(-c, a_eq, b_eq, report)
            high = -neg_high
        report.ranges.append(CellRange(cell.label, low, high, cell.protected, relaxed_low or relaxed_high))
    return report


def _bound(
    c: npt.NDArray[np.float64], a_eq: sparse.csr_matrix, b_eq: npt.NDArray[np.float64], report: AuditReport
) -> tuple[float, bool]:
    """min c·z; (value, whether the integer program had to be solved)."""
    if a_eq.shape[0] == 0:
        # nothing published: every cell can be anything non-negative
        return (0.0 if c.min() >= 0 else -math.inf), False
    res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    report.programs += 1
    if res.status == 3:  # unbounded: only possible for a maximum (c <= 0)
        return -math.inf, False
    if res.status == 2:
        raise InconsistentRelease("the published values admit no non-negative table")
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    x = np.asarray(res.x)
    if np.all(np.abs(x - np.round(x)) <= _INT_TOL):
        return float(round(res.fun, 6)), False
    # Fractional vertex: the integer optimum may be tighter than the relaxation; solve it exactly.
    n = len(c)
    mres = milp(
        c,
        constraints=LinearConstraint(a_eq, b_eq, b_eq),
        integrality=np.ones(n),
        bounds=Bounds(np.zeros(n), np.full(n, np.inf)),
    )
    report.programs += 1
    if mres.status == 0 and mres.fun is not None:
        return float(round(mres.fun, 6)), True
    if mres.status == 2:
        raise InconsistentRelease("the published values admit no non-negative integer table")
    # unbounded or undecided in the time limit: fall back to the relaxation only for an unbounded max
    if c.max() <= 0:
        return -math.inf, True
    raise RuntimeError(f"milp failed: {mres.message}")
