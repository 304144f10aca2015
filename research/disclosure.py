"""Disclosure control: which cells of a count table may be released, given everything the study released.

Rules (DESIGN §10, docs/research.md):

* **Primary suppression.**  A count from 1 to 9 is suppressed; 0 is published.
* **Secondary suppression.**  Complementary cells are suppressed so that no suppressed count can be
  recovered — or narrowed to within 1..9 — from the published cells and totals (row, column, grand
  total, age-band and period subtotals) *and from everything released earlier in the same study*.  The
  protection interval is [0, 10]: every sensitive cell's feasible range must reach 0 below and 10 above
  (research.lp_audit proves it for every release).
* **Distributions** (mean, SD, quartiles) only for cells whose count is published and at least 10.
* Age bands of at least 5 years with 85+ grouped, and no hospital dimension: enforced by research.spec.

How tables are linked.  Tables that count the same units (the same *universe*: measure, cohort, window,
period grain — research.query.CountTable.universe) are audited together, whatever their dimensions.  Their
*atoms* are the combinations of categories under every classification any of those tables uses (e.g. a
5-year and a 10-year age band, sex, period); every cell of every table is a sum of atoms, so one set of
linear equations describes all of it.  Atoms are all combinations that can exist (enumerated from the
attribute domains), so empty cells are modelled as the attacker sees them: unknown.  Only where the
domain cannot be listed (two different code groupings) are atoms limited to the combinations present —
which gives the audit *more* equations than the attacker has, never fewer, so it errs toward suppression.

Secondary suppression is the classic perturbation heuristic (Fischetti & Salazar): for each sensitive cell
and direction, a linear program finds the cheapest change of the table that moves the cell to the edge of
its protection interval while keeping every published value (this release's unsuppressed cells cost
their weight; earlier releases' published cells cannot change; atoms stay non-negative); cells that
change are suppressed.  Each solution is a certificate that the cell's range reaches that edge; the LP
audit then checks every cell independently, with integrality.  Weights prefer small interior cells over
margins and margins over the grand total.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse  # type: ignore[import-untyped]
from scipy.optimize import Bounds, LinearConstraint, linprog, milp  # type: ignore[import-untyped]

from hakobune.errors import HakobuneError
from research import lp_audit
from research.lp_audit import PROTECT_HIGH, PROTECT_LOW, AuditReport, SuppressedCell
from research.query import Units
from research.spec import Dimension, dimension_from_json

#: The smallest non-zero count that may be published; 1..MIN_COUNT-1 are suppressed.
MIN_COUNT = 10
#: Distribution statistics are published only for groups of at least this many units.
MIN_GROUP = 10

PUBLISHED = "published"
PRIMARY = "primary"
SECONDARY = "secondary"

_EPS = 1e-4  # cost per unit of atom change: keeps perturbations minimal
_TOL = 1e-6


class DisclosureError(HakobuneError):
    """A release cannot be made safe (or would contradict an earlier release); nothing is written."""

    exit_code = 2


# --------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Cell:
    labels: tuple[str, ...]
    leafsets: tuple[tuple[int, ...], ...]  # per dimension, the leaves the category covers
    totals: int  # dimensions at a subtotal or total

    @property
    def label(self) -> str:
        return " × ".join(self.labels) if self.labels else "合計"


@dataclass(frozen=True)
class TableDef:
    """A table's layout: its dimensions; cells are every combination of their categories."""

    dims: tuple[Dimension, ...]

    def cells(self) -> list[Cell]:
        per_dim = [d.categories() for d in self.dims]
        out = []
        for combo in itertools.product(*per_dim):
            out.append(
                Cell(
                    tuple(c[0] for c in combo),
                    tuple(c[1] for c in combo),
                    sum(
                        1
                        for c, d in zip(combo, self.dims, strict=True)
                        if len(c[1]) != 1 or c[0] not in d.leaves
                    ),
                )
            )
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.dims]

    @classmethod
    def from_json(cls, doc: list[dict[str, Any]]) -> TableDef:
        return cls(tuple(dimension_from_json(d) for d in doc))


@dataclass
class PriorTable:
    """A table released earlier in the study (or earlier in this release) about the same units."""

    where: str  # e.g. "release 20250101T000000Z-ab12 n_patients", for messages
    definition: TableDef
    labels: list[tuple[str, ...]]
    values: list[int | None]  # None: suppressed
    status: list[str]


# --------------------------------------------------------------------------------------------- atoms
class Universe:
    """The atoms of a set of tables counting the same units, and the units' counts per atom."""

    def __init__(self, definitions: Sequence[TableDef], units: Units) -> None:
        # distinct classifications per dimension kind, in first-seen order
        self.kinds: list[str] = []
        self.defs: dict[str, list[Dimension]] = {}
        for t in definitions:
            for d in t.dims:
                if d.kind not in self.defs:
                    self.kinds.append(d.kind)
                    self.defs[d.kind] = []
                if all(o.class_key() != d.class_key() for o in self.defs[d.kind]):
                    self.defs[d.kind].append(d)
        unit_joint: list[npt.NDArray[np.int64]] = []
        # kind -> the combinations of leaves (one column per classification) that can occur
        self.joint: dict[str, npt.NDArray[np.int64]] = {}
        for kind in self.kinds:
            defs = self.defs[kind]
            attr = units.attribute(defs[0].attribute)
            unit_leaves = (
                np.stack([d.classify(attr) for d in defs], axis=1)
                if len(attr)
                else np.zeros((0, len(defs)), dtype=np.int64)
            )
            domains = [d.domain() for d in defs]
            if all(dom is not None for dom in domains):
                dom = domains[0]
                assert dom is not None
                found = np.stack([d.classify(dom) for d in defs], axis=1)
            elif len(defs) == 1:
                found = np.arange(len(defs[0].leaves), dtype=np.int64).reshape(-1, 1)
            else:  # several code groupings: the combinations present (see the module docstring)
                found = unit_leaves
            radix = tuple(len(d.leaves) for d in defs)
            codes = np.unique(np.ravel_multi_index(tuple(np.asarray(found, dtype=np.int64).T), radix))
            self.joint[kind] = (
                np.stack(np.unravel_index(codes, radix), axis=1).astype(np.int64).reshape(-1, len(defs))
            )
            unit_codes = np.ravel_multi_index(tuple(unit_leaves.T), radix) if len(unit_leaves) else codes[:0]
            idx = np.searchsorted(codes, unit_codes).astype(np.int64)
            if len(idx) and (idx.max() >= len(codes) or not np.array_equal(codes[idx], unit_codes)):
                raise DisclosureError(f"a unit falls outside the categories of {kind} (internal error)")
            unit_joint.append(idx)
        self.shape = tuple(len(self.joint[k]) for k in self.kinds)
        self.n_atoms = int(np.prod(self.shape)) if self.shape else 1
        if self.kinds and len(units):
            atom = np.ravel_multi_index(tuple(unit_joint), self.shape)
        else:
            atom = np.zeros(len(units), dtype=np.int64)
        self.x = np.bincount(atom, weights=units.weight, minlength=self.n_atoms).astype(np.int64)

    def membership(self, definition: TableDef) -> tuple[list[Cell], sparse.csr_matrix]:
        """The table's cells and the cells × atoms 0/1 matrix."""
        cells = definition.cells()
        rows: list[npt.NDArray[np.int64]] = []
        # the position of each of the table's dimensions among its kind's classifications
        where = {
            d.kind: (i, next(p for p, o in enumerate(self.defs[d.kind]) if o.class_key() == d.class_key()))
            for i, d in enumerate(definition.dims)
        }
        every = {kind: np.arange(len(self.joint[kind])) for kind in self.kinds}
        memo: dict[tuple[str, tuple[int, ...]], npt.NDArray[np.int64]] = {}
        for cell in cells:
            allowed: list[npt.NDArray[np.int64]] = []
            for kind in self.kinds:
                if kind not in where:
                    allowed.append(every[kind])
                    continue
                i, pos = where[kind]
                key = (kind, cell.leafsets[i])
                if key not in memo:
                    memo[key] = np.flatnonzero(np.isin(self.joint[kind][:, pos], cell.leafsets[i]))
                allowed.append(memo[key])
            if self.kinds:
                grids = np.meshgrid(*allowed, indexing="ij")
                rows.append(
                    np.ravel_multi_index(tuple(g.ravel() for g in grids), self.shape).astype(np.int64)
                )
            else:
                rows.append(np.zeros(1, dtype=np.int64))
        indptr = np.cumsum([0, *[len(r) for r in rows]])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        m = sparse.csr_matrix(
            (np.ones(len(indices)), indices, indptr), shape=(len(cells), self.n_atoms), dtype=np.float64
        )
        return cells, m


# --------------------------------------------------------------------------------------------- protection
@dataclass
class ProtectedTable:
    """A count table after disclosure control.  ``values`` are the true counts (internal only);
    :meth:`published` is what may leave the analysis center."""

    definition: TableDef
    cells: list[Cell]
    values: npt.NDArray[np.int64]
    status: list[str]
    audit: AuditReport
    rounds: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def published(self) -> list[int | None]:
        return [int(v) if s == PUBLISHED else None for v, s in zip(self.values, self.status, strict=True)]

    def count(self, status: str) -> int:
        return sum(1 for s in self.status if s == status)

    def as_prior(self, where: str) -> PriorTable:
        return PriorTable(
            where, self.definition, [c.labels for c in self.cells], self.published(), self.status
        )


def protect(definition: TableDef, units: Units, prior: Sequence[PriorTable] = ()) -> ProtectedTable:
    """Apply primary and secondary suppression to the table ``definition`` over ``units``, so that with
    everything in ``prior`` (earlier tables about the same units) every sensitive cell stays protected.
    Raises :class:`DisclosureError` when an earlier release contradicts the data or protection is not
    possible, and when the final audit fails (it should not: the suppression is built to pass it)."""
    universe = Universe([*(p.definition for p in prior), definition], units)
    cells, m_cur = universe.membership(definition)
    values = np.rint(m_cur @ universe.x).astype(np.int64)

    fixed_rows: list[sparse.csr_matrix] = []
    fixed_vals: list[float] = []
    targets: list[tuple[str, sparse.csr_matrix, int]] = []  # (label, atom row, true value)
    prior_suppressed: list[SuppressedCell] = []
    for p in prior:
        pcells, m_p = universe.membership(p.definition)
        pvals = np.rint(m_p @ universe.x).astype(np.int64)
        by_labels = {c.labels: i for i, c in enumerate(pcells)}
        for labels, value, pstatus in zip(p.labels, p.values, p.status, strict=True):
            i = by_labels.get(tuple(labels))
            if i is None:
                raise DisclosureError(f"{p.where}: cell {' × '.join(labels)} no longer exists in its table")
            if value is not None:
                if int(pvals[i]) != int(value):
                    raise DisclosureError(
                        f"{p.where}: cell {' × '.join(labels) or '合計'} was published from different data"
                        " (the database changed since); publishing the same units again would let the"
                        " differences reveal small counts — use a new window or a new study"
                    )
                fixed_rows.append(m_p[i])
                fixed_vals.append(float(value))
            else:
                sensitive = pstatus == PRIMARY or 0 < int(pvals[i]) < MIN_COUNT
                label = f"{p.where}: {pcells[i].label}"
                prior_suppressed.append(SuppressedCell(label, m_p[i].indices.astype(np.int64), sensitive))
                if sensitive:
                    targets.append((label, m_p[i], int(pvals[i])))
    m_fixed = sparse.vstack(fixed_rows).tocsr() if fixed_rows else sparse.csr_matrix((0, universe.n_atoms))

    status = [PRIMARY if 0 < v < MIN_COUNT else PUBLISHED for v in values]
    for i, cell in enumerate(cells):
        if status[i] == PRIMARY:
            targets.append((cell.label, m_cur[i], int(values[i])))
    weights = np.asarray(
        [(1.0 + math.log1p(v)) * (3.0**c.totals) for v, c in zip(values, cells, strict=True)]
    )

    perturber = _Perturber(m_cur, m_fixed, universe.x)
    # how many published equations each atom appears in: an atom in none can change freely
    cover = np.asarray(m_fixed.sum(axis=0)).ravel() + np.asarray(m_cur.sum(axis=0)).ravel()

    def run(pending: list[tuple[str, sparse.csr_matrix, int, bool]], integer: bool) -> None:
        for k, s in enumerate(status):
            if s != PUBLISHED and not published_removed[k]:
                cover[m_cur[k].indices] -= 1
                published_removed[k] = True
        for label, row, value, up in pending:
            amount = (PROTECT_HIGH - value) if up else (value - PROTECT_LOW)
            if amount <= 0:
                continue
            free = row.indices[cover[row.indices] == 0]
            if (up and len(free)) or (not up and universe.x[free].sum() >= amount):
                continue  # atoms no published value constrains already give the cell that room
            changed = perturber.solve(row, up, float(amount), weights, status, integer)
            if changed is None:
                raise DisclosureError(
                    f"cannot protect cell {label}: the values published earlier in this study pin it"
                )
            for j in changed:
                status[j] = SECONDARY
                cover[m_cur[j].indices] -= 1
                published_removed[j] = True

    published_removed = [False] * len(status)
    run([(lb, row, v, up) for lb, row, v in targets for up in (True, False)], integer=False)
    rounds = 1
    while True:
        report = _audit(universe, m_cur, values, status, cells, m_fixed, fixed_vals, prior_suppressed)
        if report.ok:
            return ProtectedTable(definition, cells, values, status, report, rounds)
        if rounds >= 3:
            worst = report.failures[0]
            raise DisclosureError(
                f"the disclosure audit failed for cell {worst.label} (feasible range"
                f" {worst.low:g}..{worst.high:g} does not cover [{PROTECT_LOW}, {PROTECT_HIGH}]);"
                " nothing was released"
            )
        # A fractional certificate did not survive integrality (tables of three or more dimensions):
        # redo the failing cells with an integer program.
        rounds += 1
        failing = {r.label: r for r in report.failures}
        redo = []
        for lb, row, v in targets:
            r = failing.get(lb)
            if r is None:
                continue
            if r.high < PROTECT_HIGH:
                redo.append((lb, row, v, True))
            if r.low > PROTECT_LOW:
                redo.append((lb, row, v, False))
        run(redo, integer=True)


def _audit(
    universe: Universe,
    m_cur: sparse.csr_matrix,
    values: npt.NDArray[np.int64],
    status: list[str],
    cells: list[Cell],
    m_fixed: sparse.csr_matrix,
    fixed_vals: list[float],
    prior_suppressed: list[SuppressedCell],
) -> AuditReport:
    pub = np.flatnonzero(np.asarray([s == PUBLISHED for s in status]))
    a = sparse.vstack([m_fixed, m_cur[pub]]).tocsr()
    b = np.concatenate([np.asarray(fixed_vals, dtype=np.float64), values[pub].astype(np.float64)])
    suppressed = list(prior_suppressed)
    for i, s in enumerate(status):
        if s != PUBLISHED:
            suppressed.append(SuppressedCell(cells[i].label, m_cur[i].indices.astype(np.int64), s == PRIMARY))
    try:
        return lp_audit.audit(universe.n_atoms, a, b, suppressed)
    except lp_audit.InconsistentRelease as e:
        raise DisclosureError(f"the released values are inconsistent ({e})") from None


class _Perturber:
    """The perturbation program of one table, built once: variables y+ (A), y- (A) for the atoms and d+
    (K), d- (K) for every current cell, with cell k's change = d+_k - d-_k; earlier published values
    cannot change; atoms stay non-negative.  Only the costs (published cells cost their weight, suppressed
    cells nothing) and the target row vary between solves."""

    def __init__(
        self, m_cur: sparse.csr_matrix, m_fixed: sparse.csr_matrix, x: npt.NDArray[np.int64]
    ) -> None:
        self.n_atoms = len(x)
        self.k = k = m_cur.shape[0]
        h = m_fixed.shape[0]
        eq_fixed = sparse.hstack([m_fixed, -m_fixed, sparse.csr_matrix((h, 2 * k))])
        eq_cur = sparse.hstack([m_cur, -m_cur, -sparse.identity(k), sparse.identity(k)])
        self.a_eq = sparse.vstack([eq_fixed, eq_cur]).tocsr()
        self.b_eq = np.zeros(h + k)
        n = 2 * self.n_atoms + 2 * k
        self.bounds = np.zeros((n, 2))
        self.bounds[:, 1] = np.inf
        self.bounds[self.n_atoms : 2 * self.n_atoms, 1] = x

    def solve(
        self,
        target: sparse.csr_matrix,
        up: bool,
        amount: float,
        weights: npt.NDArray[np.float64],
        status: list[str],
        integer: bool,
    ) -> list[int] | None:
        """The cheapest change moving ``target`` by ``amount`` (up or down): the published cells it
        changes (to be suppressed), or None when no change is possible."""
        na, k = self.n_atoms, self.k
        open_cells = np.asarray([s == PUBLISHED for s in status])
        w = np.where(open_cells, weights, 0.0)
        c = np.concatenate([np.full(2 * na, _EPS), w, w])
        t = target.toarray().ravel()
        sign = -1.0 if up else 1.0  # up: t·(y+ - y-) >= amount  <=>  -t·y+ + t·y- <= -amount
        a_ub = np.concatenate([sign * t, -sign * t, np.zeros(2 * k)]).reshape(1, -1)
        b_ub = np.asarray([-amount])
        if integer:
            res = milp(
                c,
                constraints=[
                    LinearConstraint(self.a_eq, self.b_eq, self.b_eq),
                    LinearConstraint(a_ub, -np.inf, b_ub),
                ],
                integrality=np.ones(len(c)),
                bounds=Bounds(self.bounds[:, 0], self.bounds[:, 1]),
            )
            if res.status != 0 or res.x is None:
                return None
            sol = np.asarray(res.x)
        else:
            lres = linprog(
                c, A_ub=a_ub, b_ub=b_ub, A_eq=self.a_eq, b_eq=self.b_eq, bounds=self.bounds, method="highs"
            )
            if lres.status != 0:
                return None
            sol = np.asarray(lres.x)
        d = sol[2 * na :]
        moved = (d[:k] + d[k:]) > _TOL
        return [int(j) for j in np.flatnonzero(moved & open_cells)]


# --------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Distribution:
    mean: float
    sd: float
    p25: float
    median: float
    p75: float


def distributions(definition: TableDef, units: Units, table: ProtectedTable) -> list[Distribution | None]:
    """Distribution statistics per cell, only where the cell's count is published and >= MIN_GROUP
    (None elsewhere).  Quartiles by linear interpolation (R type 7, DuckDB ``quantile_cont``); SD with
    n-1.  Minimum and maximum are never computed: they are one patient's value."""
    assert units.value is not None
    leaves = [d.classify(units.attribute(d.attribute)) for d in definition.dims]
    published = table.published()
    out: list[Distribution | None] = []
    for cell, n in zip(table.cells, published, strict=True):
        if n is None or n < MIN_GROUP:
            out.append(None)
            continue
        mask = np.ones(len(units), dtype=bool)
        for lv, leafset in zip(leaves, cell.leafsets, strict=True):
            mask &= np.isin(lv, leafset)
        v = units.value[mask]
        if len(v) != n:  # the count table and the units disagree: never publish
            raise DisclosureError(f"cell {cell.label}: {len(v)} values for a count of {n}")
        q = np.quantile(v, [0.25, 0.5, 0.75])
        out.append(Distribution(float(v.mean()), float(v.std(ddof=1)), float(q[0]), float(q[1]), float(q[2])))
    return out
