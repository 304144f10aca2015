"""Charts of a released table (matplotlib, Japanese labels in Noto Sans CJK JP).

Charts are drawn from the :class:`~research.release.OutputTable` only — the table after disclosure
control — so they cannot show more than the CSV: a suppressed count has no bar (a ``*`` marks its place),
a withheld distribution has no box.  One chart per count column (bars by the first dimension, one series
per category of the second) and one per lab distribution (median with the interquartile range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib import font_manager
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from research.release import SUPPRESSED, OutputTable

#: Where Debian's fonts-noto-cjk puts the font (scripts/system-deps installs it).
CJK_FONT_FILES = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf"),
)
CJK_FONT = "Noto Sans CJK JP"
_MAX_SERIES = 8


def setup_font() -> str | None:
    """Register Noto Sans CJK JP with matplotlib; the family name, or None when it is not installed
    (then Japanese labels would render as boxes: the caller reports it)."""
    for path in CJK_FONT_FILES:
        if path.exists():
            font_manager.fontManager.addfont(str(path))
            plt.rcParams["font.family"] = [CJK_FONT, "DejaVu Sans"]
            return CJK_FONT
    return None


@dataclass(frozen=True)
class Point:
    x: str  # category of the first dimension
    series: str  # category of the second dimension ("" when there is none)
    value: float | None  # None: suppressed or withheld
    low: float | None = None
    high: float | None = None


def series(table: OutputTable, column: str) -> list[Point]:
    """The points a chart of ``column`` shows: leaf categories of the first dimension by leaf categories
    of the second; further dimensions at their total.  Values come from the released table only."""
    if not table.dims:
        return []
    col = next(c for c in table.columns if c.name == column)
    first = table.dims[0]
    second = table.dims[1] if len(table.dims) > 1 else None
    points = []
    for i, labels in enumerate(table.rows):
        if labels[0] not in first.leaves:
            continue
        if second is not None and labels[1] not in second.leaves:
            continue
        if any(lb not in ("合計",) for lb in labels[2:]):
            continue
        v = table.data[column][i]
        value = _num(v)
        low = high = None
        if col.kind == "stat" and value is not None:
            base = column[: -len("_median")]
            low = _num(table.data[f"{base}_p25"][i])
            high = _num(table.data[f"{base}_p75"][i])
        points.append(Point(labels[0], labels[1] if second is not None else "", value, low, high))
    return points


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def draw(table: OutputTable, directory: Path, title: str) -> list[str]:
    """Draw every chart into ``directory``; the file names."""
    setup_font()
    names: list[str] = []
    names_in_table = {c.name for c in table.columns}
    for col in table.columns:
        lab_count = f"{col.name[2:]}_median" in names_in_table  # n_<lab>: its chart is the distribution's
        if col.kind == "count" and not col.name.endswith("_population") and not lab_count:
            names.append(_bars(table, col.name, col.label, title, directory))
        elif col.kind == "stat" and col.name.endswith("_median"):
            names.append(_boxes(table, col.name, col.label.replace(" 中央値", ""), title, directory))
    return [n for n in names if n]


def _size(xs: list[str], ss: list[str]) -> tuple[float, float]:
    return (min(12.0, max(6.0, 0.22 * len(xs) * max(1, len(ss)) + 2.0)), 4.8)


def _layout(points: list[Point]) -> tuple[list[str], list[str]]:
    xs = list(dict.fromkeys(p.x for p in points))
    ss = list(dict.fromkeys(p.series for p in points))[:_MAX_SERIES]
    return xs, ss


def _bars(table: OutputTable, column: str, label: str, title: str, directory: Path) -> str:
    points = series(table, column)
    if not points:
        return ""
    xs, ss = _layout(points)
    fig, ax = plt.subplots(figsize=_size(xs, ss))
    width = 0.8 / max(1, len(ss))
    for j, s in enumerate(ss):
        pos, vals = [], []
        for i, x in enumerate(xs):
            p = next((q for q in points if q.x == x and q.series == s), None)
            if p is None:
                continue
            if p.value is None:
                ax.text(
                    i + (j - (len(ss) - 1) / 2) * width, 0, SUPPRESSED, ha="center", va="bottom", fontsize=12
                )
                continue
            pos.append(i + (j - (len(ss) - 1) / 2) * width)
            vals.append(p.value)
        ax.bar(pos, vals, width=width, label=s or None)
    ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right")
    ax.set_ylabel(label)
    ax.set_title(f"{title}\n{label}（{SUPPRESSED}: 秘匿）", fontsize=11)
    return _save(fig, ax, table, ss, directory / f"chart_{column}.png")


def _boxes(table: OutputTable, column: str, label: str, title: str, directory: Path) -> str:
    points = series(table, column)
    if not points:
        return ""
    xs, ss = _layout(points)
    fig, ax = plt.subplots(figsize=_size(xs, ss))
    width = 0.8 / max(1, len(ss))
    for j, s in enumerate(ss):
        pos, med, err_lo, err_hi = [], [], [], []
        for i, x in enumerate(xs):
            p = next((q for q in points if q.x == x and q.series == s), None)
            if p is None or p.value is None or p.low is None or p.high is None:
                continue
            pos.append(i + (j - (len(ss) - 1) / 2) * width)
            med.append(p.value)
            err_lo.append(p.value - p.low)
            err_hi.append(p.high - p.value)
        ax.errorbar(pos, med, yerr=[err_lo, err_hi], fmt="o", capsize=3, label=s or None)
    ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right")
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_ylabel(f"{label}（中央値と四分位範囲）")
    ax.set_title(f"{title}\n{label}（10 人未満・秘匿の群は表示しない）", fontsize=11)
    return _save(fig, ax, table, ss, directory / f"chart_{column.removesuffix('_median')}.png")


def _save(fig: Figure, ax: Axes, table: OutputTable, ss: list[str], path: Path) -> str:
    """What every chart ends with: the first dimension on the x axis, a legend for the second, the file."""
    ax.set_xlabel(table.dims[0].title)
    if any(ss):
        ax.legend(title=table.dims[1].title if len(table.dims) > 1 else None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
