"""research.lp_audit: the feasible range of suppressed cells given everything published."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse  # type: ignore[import-untyped]

from research.lp_audit import PROTECT_HIGH, PROTECT_LOW, InconsistentRelease, SuppressedCell, audit


def _two_way(table: np.ndarray) -> tuple[list[np.ndarray], list[float], list[str]]:
    """Atom index sets and values of the margins of an m×n table (atoms = interior cells, row-major)."""
    m, n = table.shape
    rows, values, labels = [], [], []
    for i in range(m):
        rows.append(np.arange(i * n, (i + 1) * n))
        values.append(float(table[i].sum()))
        labels.append(f"row {i}")
    for j in range(n):
        rows.append(np.arange(j, m * n, n))
        values.append(float(table[:, j].sum()))
        labels.append(f"col {j}")
    rows.append(np.arange(m * n))
    values.append(float(table.sum()))
    labels.append("total")
    return rows, values, labels


def _matrix(rows: list[np.ndarray], n_atoms: int) -> sparse.csr_matrix:
    m = sparse.lil_matrix((len(rows), n_atoms))
    for i, r in enumerate(rows):
        m[i, r] = 1.0
    return m.tocsr()


@settings(max_examples=12, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda m: st.integers(2, 4).flatmap(
            lambda n: st.lists(st.integers(0, 30), min_size=m * n, max_size=m * n).map(
                lambda v: np.asarray(v, dtype=np.int64).reshape(m, n)
            )
        )
    )
)
def test_ranges_are_the_frechet_bounds_when_only_margins_are_published(table: np.ndarray) -> None:
    # With every interior cell suppressed and only the margins published, the sharp bounds of cell
    # (i, j) are the Fréchet bounds [max(0, r_i + c_j - T), min(r_i, c_j)]: an independent closed form.
    m, n = table.shape
    rows, values, _ = _two_way(table)
    cells = [SuppressedCell(f"{i},{j}", np.asarray([i * n + j]), True) for i in range(m) for j in range(n)]
    report = audit(m * n, _matrix(rows, m * n), values, cells)
    r, c, t = table.sum(axis=1), table.sum(axis=0), table.sum()
    for rng in report.ranges:
        i, j = map(int, rng.label.split(","))
        assert rng.low == max(0, r[i] + c[j] - t)
        assert rng.high == min(r[i], c[j])
    assert report.programs == 2 * m * n


def test_naive_primary_only_suppression_fails_the_audit() -> None:
    # A 3-cell row with its total published: suppressing only the sensitive 3 lets anyone recompute it.
    table = np.asarray([[3, 20, 15], [12, 30, 40]])
    rows, values, _ = _two_way(table)
    published = [(r, v) for r, v in zip(rows, values, strict=True)]
    interior = [(np.asarray([k]), float(table.flat[k])) for k in range(6) if k != 0]
    a = _matrix([r for r, _ in published] + [r for r, _ in interior], 6)
    b = [v for _, v in published] + [v for _, v in interior]
    report = audit(6, a, b, [SuppressedCell("A×x", np.asarray([0]), True)])
    assert not report.ok
    (rng,) = report.failures
    assert (rng.low, rng.high) == (3, 3)


def test_complementary_suppression_passes_and_reports_the_range() -> None:
    # Suppress (0,0)=3 and (0,1)=20 and (1,0)=12 and (1,1)=30: a rectangle; the 3 can move within [0, 23].
    table = np.asarray([[3, 20, 15], [12, 30, 40]])
    rows, values, _ = _two_way(table)
    published_interior = [2, 5]
    a = _matrix(rows + [np.asarray([k]) for k in published_interior], 6)
    b = values + [float(table.flat[k]) for k in published_interior]
    cells = [
        SuppressedCell("A×x", np.asarray([0]), True),
        SuppressedCell("A×y", np.asarray([1]), False),
        SuppressedCell("B×x", np.asarray([3]), False),
        SuppressedCell("B×y", np.asarray([4]), False),
    ]
    report = audit(6, a, b, cells)
    assert report.ok
    got = {r.label: (r.low, r.high) for r in report.ranges}
    assert got["A×x"] == (0, 15)  # down to 0 (row 0 gives the 3 to y), up to 15 (column x holds 15)
    assert got["A×y"] == (8, 23)
    assert report.narrowest() == (0, 15)
    assert report.protected == 1


def test_protection_interval_edges() -> None:
    # A cell whose range reaches exactly 0 and 10 passes; 1 above or 9 below fails.
    for total, ok in ((10, True), (9, False)):
        a = _matrix([np.asarray([0, 1])], 2)
        report = audit(2, a, [float(total)], [SuppressedCell("c", np.asarray([0]), True)])
        assert report.ranges[0].low == PROTECT_LOW
        assert report.ranges[0].high == total
        assert report.ok is ok


def test_unbounded_cell_and_empty_release() -> None:
    # Nothing published about the atom: its range is [0, inf).
    report = audit(2, _matrix([np.asarray([0])], 2), [5.0], [SuppressedCell("free", np.asarray([1]), True)])
    assert report.ranges[0].low == 0 and math.isinf(report.ranges[0].high)
    assert report.ok
    assert report.ranges[0].to_json()["high"] is None
    empty = audit(1, sparse.csr_matrix((0, 1)), [], [SuppressedCell("x", np.asarray([0]), True)])
    assert empty.ok and math.isinf(empty.ranges[0].high)


def test_integer_bound_replaces_a_fractional_lp_vertex() -> None:
    # An odd cycle: z1+z2, z2+z3, z1+z3 each published (with slack atoms) as 1.  The LP maximum of
    # z1+z2+z3 is 1.5 (every z = 0.5); counts are integers, so the true maximum is 1.
    rows = [np.asarray([0, 1, 3]), np.asarray([1, 2, 4]), np.asarray([0, 2, 5])]
    report = audit(6, _matrix(rows, 6), [1.0, 1.0, 1.0], [SuppressedCell("z", np.asarray([0, 1, 2]), False)])
    (rng,) = report.ranges
    assert rng.high == 1 and rng.low == 0
    assert rng.relaxed
    # and it matters: a protected cell whose relaxation would reach 10 but whose integer range does not
    rows10 = [np.asarray([0, 1, 3]), np.asarray([1, 2, 4]), np.asarray([0, 2, 5])]
    r10 = audit(6, _matrix(rows10, 6), [13.0, 13.0, 13.0], [SuppressedCell("z", np.asarray([0, 1, 2]), True)])
    assert r10.ranges[0].high == 19  # floor of the LP's 19.5
    assert PROTECT_HIGH <= 19


def test_inconsistent_published_values_are_reported() -> None:
    a = _matrix([np.asarray([0, 1]), np.asarray([0])], 2)
    with pytest.raises(InconsistentRelease):
        audit(2, a, [3.0, 5.0], [SuppressedCell("x", np.asarray([1]), True)])


def test_shape_mismatch_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        audit(3, _matrix([np.asarray([0])], 2), [1.0], [])
