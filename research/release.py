"""What leaves the analysis center: the released table as CSV and HTML, charts, and a note.

Only :class:`OutputTable` reaches this module, and it holds published values only: counts that passed
disclosure control, statistics of groups of 10 or more, rates of published counts.  A suppressed value is
``*`` everywhere (CSV, HTML, charts); a value that does not exist (a distribution of nobody, a rate over an
empty population) is empty.  Files are written into a temporary directory, fsynced, and the directory is
renamed into ``released/<study>/<run>/`` only after the release is recorded in the registry and the audit
log (research.analysis), so a visible release is always a recorded one.
"""

from __future__ import annotations

import csv
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakobune.durable import fsync_dir
from research.spec import Dimension

SUPPRESSED = "*"

#: The fixed part of every note (no figures from the data).  Tests strip it before looking for counts.
RULES_MD = """## 秘匿の方法（公表前の開示制御）

- 一次秘匿: 1〜9 の件数は `*` として公表しない（0 は公表する）。
- 二次秘匿: 合計・小計から秘匿セルを逆算できないよう、補完セルも `*` とする。同じ研究でこれまでに公表した
  すべての表も含めて線形計画法で監査し、秘匿した 1〜9 の各セルについて、公表値と矛盾しない値の範囲が
  0 から 10 までを必ず含むこと（保護区間 [0, 10]）を確認した。
- 分布統計（平均・標準偏差・四分位）は、件数が公表され 10 人以上の群に限って示す。最小値・最大値は示さない。
- 年齢階級は 5 歳以上の幅とし、85 歳以上は一つにまとめる。
- 病院別の集計・病院名の表示は行わない。
"""


@dataclass(frozen=True)
class Column:
    name: str  # CSV header (count columns are n_*)
    label: str  # Japanese header
    kind: str  # count | stat | rate
    decimals: int = 0
    measure: str = ""  # the measure's name (groups columns in charts and the note)


Value = int | float | str | None


@dataclass
class OutputTable:
    """The released table: one row per cell (dimension categories), one column per published figure."""

    dims: tuple[Dimension, ...]
    rows: list[tuple[str, ...]]
    columns: list[Column]
    data: dict[str, list[Value]]

    def leaf_rows(self) -> list[int]:
        """Rows whose every category is a leaf (no subtotal or total)."""
        return [
            i
            for i, labels in enumerate(self.rows)
            if all(lb in d.leaves for lb, d in zip(labels, self.dims, strict=True))
        ]


@dataclass
class NoteContext:
    """What the note says about the release (no values from the data)."""

    title: str
    study_id: str
    study_title: str
    run_id: str
    released_at: str
    spec_name: str
    spec_sha256: str
    snapshot: str
    window: str
    approval: str
    suppression: list[tuple[str, int, int, int]]  # (column, primary, secondary, published) cells
    stats: list[tuple[str, int, int]]  # (measure label, cells withheld for n < 10 or suppressed count, shown)
    audited_cells: int
    audit_programs: int
    narrowest: tuple[float, float] | None
    prior_releases: int
    description: str = ""
    files: list[str] = field(default_factory=list)


def format_value(value: Value, column: Column) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if column.kind == "count":
        return str(int(value))
    return f"{float(value):.{column.decimals}f}"


def render_csv(table: OutputTable) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([d.kind for d in table.dims] + [c.name for c in table.columns])
    for i, labels in enumerate(table.rows):
        w.writerow(list(labels) + [format_value(table.data[c.name][i], c) for c in table.columns])
    return out.getvalue()


def render_html(table: OutputTable, ctx: NoteContext, charts: Sequence[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(d.title)}</th>" for d in table.dims) + "".join(
        f'<th class="{c.kind}">{e(c.label)}</th>' for c in table.columns
    )
    body = []
    for i, labels in enumerate(table.rows):
        total = any(lb not in d.leaves for lb, d in zip(labels, table.dims, strict=True))
        tds = "".join(f'<th scope="row">{e(lb)}</th>' for lb in labels)
        for c in table.columns:
            v = table.data[c.name][i]
            text = format_value(v, c)
            if c.kind == "count" and isinstance(v, int):
                text = f"{v:,}"
            cls = f"{c.kind} suppressed" if v == SUPPRESSED else c.kind
            tds += f'<td class="{cls}">{e(text)}</td>'
        body.append(f'<tr class="{"total" if total else "cell"}">{tds}</tr>')
    imgs = "".join(f'<figure><img src="{e(name)}" alt="{e(name)}"></figure>' for name in charts)
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>{e(ctx.title)}</title>
<style>
body {{ font-family: "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic", sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #999; padding: 0.2em 0.6em; }}
td {{ text-align: right; }} tr.total {{ background: #f2f2f2; font-weight: bold; }}
td.suppressed {{ color: #a00; text-align: center; }} figure img {{ max-width: 100%; }}
</style></head><body>
<h1>{e(ctx.title)}</h1>
<p>研究 {e(ctx.study_id)}「{e(ctx.study_title)}」／実行 {e(ctx.run_id)}／対象期間（診療日）{e(ctx.window)}</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<p>「{SUPPRESSED}」は開示制御により秘匿した値（1〜9 の件数と、その逆算を防ぐための補完セル）。
空欄は該当する値がないこと（対象者がいない群の分布など）を示す。病院別の集計は行わない。</p>
{imgs}
</body></html>
"""


def render_note(ctx: NoteContext) -> str:
    lines = [
        f"# 公表ノート: {ctx.title}",
        "",
        f"- 研究: {ctx.study_id}「{ctx.study_title}」",
        f"- 倫理審査: {ctx.approval}",
        f"- 実行: {ctx.run_id}（{ctx.released_at}）",
        f"- 解析仕様: {ctx.spec_name}（SHA-256 {ctx.spec_sha256}）",
        f"- データのスナップショット: {ctx.snapshot}",
        f"- 対象期間（診療日）: {ctx.window}",
    ]
    if ctx.description:
        lines += ["", ctx.description]
    lines += [
        "",
        RULES_MD.rstrip(),
        "",
        "## 秘匿したセル",
        "",
        "| 列 | 一次秘匿 | 二次秘匿 | 公表 |",
        "|---|---|---|---|",
    ]
    for column, primary, secondary, published in ctx.suppression:
        lines.append(f"| {column} | {primary} セル | {secondary} セル | {published} セル |")
    if ctx.stats:
        lines += ["", "| 分布統計 | 非公表（10 人未満または件数秘匿） | 公表 |", "|---|---|---|"]
        for label, withheld, shown in ctx.stats:
            lines.append(f"| {label} | {withheld} セル | {shown} セル |")
    lines += ["", "## 監査（線形計画法）", ""]
    before = (
        f"この研究の過去の公表 {ctx.prior_releases} 回分を含め、"
        if ctx.prior_releases
        else "この公表について、"
    )
    lines.append(
        f"{before}秘匿した {ctx.audited_cells} セルそれぞれの取りうる範囲を最小化・最大化で求めた"
        f"（計 {ctx.audit_programs} 問）。"
    )
    if ctx.narrowest is not None:
        lo, hi = ctx.narrowest
        hi_text = "上限なし" if hi == float("inf") else f"{hi:g}"
        lines.append(
            "1〜9 を含む秘匿セルの範囲はすべて保護区間 [0, 10] を含む"
            f"（下限の最大 {lo:g}、上限の最小 {hi_text}）。"
        )
    else:
        lines.append("1〜9 の件数を含むセルはなかった。")
    lines += ["", "## ファイル", ""] + [f"- {f}" for f in ctx.files]
    return "\n".join(lines) + "\n"


def write_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_release(
    directory: Path, table: OutputTable, ctx: NoteContext, chart_writer: Any | None
) -> list[str]:
    """Write table.csv, the charts, table.html and note.md into ``directory`` (fsynced); the file names.
    ``chart_writer(table, directory, title) -> list[str]`` draws the charts (None: no charts)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=False)
    files = ["table.csv"]
    write_file(directory, "table.csv", render_csv(table).encode("utf-8"))
    charts: list[str] = list(chart_writer(table, directory, ctx.title)) if chart_writer is not None else []
    for name in charts:
        with open(directory / name, "rb+") as f:
            os.fsync(f.fileno())
    files += [*charts, "table.html", "note.md"]
    ctx.files = files
    write_file(directory, "table.html", render_html(table, ctx, charts).encode("utf-8"))
    write_file(directory, "note.md", render_note(ctx).encode("utf-8"))
    fsync_dir(directory)
    return files
