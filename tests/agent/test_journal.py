"""SS-MIX2 transaction journals: the format written, the tolerant reader, and the synthetic journal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.ssmix2.journal import (
    MAX_LINE,
    JournalError,
    JournalPosition,
    JournalReader,
    format_line,
    is_well_formed,
    journal_end,
    journal_file_name,
    journal_files,
    names_on_line,
)
from hakobune.synth import JOURNAL_DIR, SSMIX2_DIR, advance, generate
from tests.conftest import ssmix_relpath

TS = "20250401093000123"
A = ssmix_relpath(patient_id="1234567890", order_no="000000000000001")
A2 = A[:-1] + "2"
B = ssmix_relpath(patient_id="2234567890", care_date="-", data_type="ADT-00", order_no="999999999999999")
C = ssmix_relpath(patient_id="3234567890", care_date="20250402", data_type="OML-11")


def folder(rel: str) -> str:
    return rel.rsplit("/", 1)[0]


def read_all(journal: Path, since: JournalPosition) -> tuple[JournalReader, set[str]]:
    reader = JournalReader(journal, since)
    return reader, set(reader.dirty_dirs())


def put(journal: Path, name: str, data: bytes, mode: str = "ab") -> None:
    journal.mkdir(exist_ok=True)
    with open(journal / name, mode) as fh:
        fh.write(data)


# ------------------------------------------------------------------------------------------------ format
def test_format_line_is_the_documented_format_and_reads_back() -> None:
    line = format_line(TS, "RENAME", A, A2)
    assert line == f"{TS}\tRENAME\t{A}\t{A2}\n"
    raw = line.encode().rstrip(b"\n")
    assert is_well_formed(raw)
    assert {n.folder for n in names_on_line(raw)} == {folder(A)}
    assert is_well_formed(format_line(TS, "ADD", A).encode().rstrip(b"\n"))
    assert journal_file_name("20250401") == "TR_20250401.DAT"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("2025", "ADD", A, None), "17 digits"),
        ((TS, "COPY", A, None), "unknown"),
        ((TS, "RENAME", A, None), "RENAME"),
        ((TS, "ADD", A, A2), "RENAME"),
        ((TS, "ADD", A + "\tx", None), "tabs"),
    ],
)
def test_format_line_refuses_what_it_cannot_write(args: tuple[str, str, str, str | None], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        format_line(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line",
    [
        f"{TS}\tADD\t{A}\t{A2}",  # ADD with a second path
        f"{TS}\tRENAME\t{A}",  # RENAME without one
        f"2025-04-01\tADD\t{A}",  # timestamp
        f"{TS}\tADD\t../../{A}",  # path not 6 components
        f"{TS}\tADD\t{folder(A)}/not-a-name",
        f"{TS} ADD {A}",  # spaces, not tabs
    ],
)
def test_lines_out_of_format_are_not_well_formed(line: str) -> None:
    assert not is_well_formed(line.encode())


# ------------------------------------------------------------------------------------------------ reading
def test_reader_takes_any_ssmix2_name_on_a_line_and_counts_the_rest(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    win = "D:\\SS-MIX2\\" + B.replace("/", "\\")
    lines = [
        format_line(TS, "ADD", A).encode(),
        b"# exported by vendor gateway v2\n",  # no name
        b"\n",  # blank: ignored
        f'2025/04/01 10:00:00,UPDATE,"{win}"\r\n'.encode(),  # another vendor's format, CRLF
        b"\x00\xff\xfe\xfd binary junk\n",
        f"{TS}\tDELETE\t{C}\n".encode(),
    ]
    put(j, "TR_20250401.DAT", b"".join(lines))
    reader, dirty = read_all(j, JournalPosition("", 0))
    assert dirty == {folder(A), folder(B), folder(C)}
    assert (reader.lines, reader.malformed, reader.unnamed, reader.names) == (5, 3, 2, 3)
    assert reader.position == JournalPosition("TR_20250401.DAT", sum(len(x) for x in lines))


def test_partial_last_line_waits_for_its_end(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    first = format_line(TS, "ADD", A).encode()
    second = format_line(TS, "ADD", C).encode()
    put(j, "TR_20250401.DAT", first + second[:30])
    reader, dirty = read_all(j, JournalPosition("", 0))
    assert dirty == {folder(A)}
    assert reader.position == JournalPosition("TR_20250401.DAT", len(first))
    assert journal_end(j) == reader.position  # a walk's start position also stops before it
    put(j, "TR_20250401.DAT", second[30:])
    reader, dirty = read_all(j, reader.position)
    assert dirty == {folder(C)}
    assert reader.position.offset == len(first) + len(second)


def test_a_new_day_file_is_read_from_its_start_and_ends_the_older_partial_line(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    first = format_line(TS, "ADD", A).encode()
    cut = format_line(TS, "RENAME", A, A2).encode()[:-1]  # the writer crashed before the newline
    put(j, "TR_20250401.DAT", first + cut)
    reader, _ = read_all(j, JournalPosition("", 0))
    pos = reader.position
    assert pos.offset == len(first)
    put(j, "TR_20250402.DAT", format_line("20250402080000000", "ADD", C).encode())
    put(j, "NOTES.TXT", f"not a journal {B}\n".encode())  # not a TR file: ignored
    reader, dirty = read_all(j, pos)
    assert dirty == {folder(A), folder(C)}
    assert reader.position == JournalPosition("TR_20250402.DAT", len(format_line("2" * 17, "ADD", C)))
    assert journal_files(j) == ["TR_20250401.DAT", "TR_20250402.DAT"]


def test_overlong_lines_are_skipped_with_bounded_memory(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    junk = os.urandom(3 * MAX_LINE).replace(b"\n", b"x")
    put(j, "TR_20250401.DAT", junk + b"\n" + format_line(TS, "ADD", A).encode())
    reader, dirty = read_all(j, JournalPosition("", 0))
    assert dirty == {folder(A)}
    assert (reader.lines, reader.malformed, reader.unnamed) == (2, 1, 1)


def test_a_position_that_no_longer_fits_the_journal_is_an_error(tmp_path: Path) -> None:
    j = tmp_path / "journal"
    put(j, "TR_20250401.DAT", format_line(TS, "ADD", A).encode() * 3)
    with pytest.raises(JournalError, match="shorter than the saved position"):
        JournalReader(j, JournalPosition("TR_20250401.DAT", 10_000))
    with pytest.raises(
        JournalError, match=r"TR_20250331\.DAT: the journal file of the saved position is gone"
    ):
        JournalReader(j, JournalPosition("TR_20250331.DAT", 5))
    # An empty or missing folder has nothing to read and no end but the start.
    assert journal_end(tmp_path / "none") == JournalPosition("", 0)
    reader, dirty = read_all(tmp_path / "none", JournalPosition("", 0))
    assert dirty == set() and reader.position == JournalPosition("", 0)


def test_names_with_unusable_folders_are_left_out() -> None:
    assert names_on_line(b"ADD 123_20250401_OMP-01_1_20250401000000000_01_1") == []  # PID too short
    assert names_on_line(b"ADD 1234567_20251301_OMP-01_1_20250401000000000_01_1") == []  # no 13th month


# ------------------------------------------------------------------------------------------- synth journal
def _journal(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / JOURNAL_DIR).iterdir())}


def _tree_names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_synth_journal_is_deterministic_and_replays_to_the_tree(tmp_path: Path) -> None:
    one, two, longer = tmp_path / "one", tmp_path / "two", tmp_path / "longer"
    generate(one, patients=80, days=6, seed=5, workers=1)
    generate(two, patients=80, days=6, seed=5, workers=2)
    assert _journal(one) == _journal(two)
    assert len(_journal(one)) == 6 and all(name.startswith("TR_202504") for name in _journal(one))
    before = _tree_names(one / SSMIX2_DIR)
    advance(one, 3, workers=2)
    generate(longer, patients=80, days=9, seed=5, workers=1)
    assert _journal(one) == _journal(longer)  # generate(n) + advance(k) == generate(n + k), journal too

    # Replaying days 6..8 of the journal on the names of the 6-day tree gives the 9-day tree.
    names = set(before)
    lines = 0
    for day in sorted(_journal(one))[6:]:
        for raw in _journal(one)[day].splitlines():
            assert is_well_formed(raw)
            _ts, op, *paths = raw.decode().split("\t")
            lines += 1
            if op == "ADD":
                assert paths[0] not in names
                names.add(paths[0])
            else:
                assert op == "RENAME" and paths[0] in names and paths[1] not in names
                names.remove(paths[0])
                names.add(paths[1])
    assert lines > 0
    assert names == _tree_names(one / SSMIX2_DIR)
