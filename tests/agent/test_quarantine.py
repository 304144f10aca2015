"""Every quarantine path of the SS-MIX2 reader: a one-line reason per file, and the rest still read."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import agent.ssmix2.reader as reader
from agent.ssmix2.layout import FoundFile
from agent.ssmix2.reader import FileOutcome, Status, read_file, read_tree
from hakobune.cli import app
from hakobune.hl7 import encode_message
from hakobune.records import Patient, Prescription
from tests.conftest import make_message, msh, ssmix_relpath, write_message, write_tree

BAD_PID = "1234567"
#: Two valid files that sort before and after everything the tests break (patients 0000001 and 9999999).
GOOD_ADT = ssmix_relpath("0000001", "-", "ADT-00", department="-")
GOOD_OML = ssmix_relpath("9999999", "20240401", "OML-11")
GOOD_SAME_PATIENT = ssmix_relpath(BAD_PID, "20240401", "OMP-11")


def _good_tree(root: Path) -> Path:
    write_message(root, GOOD_ADT, make_message("ADT-00", patient_id="0000001"))
    write_message(root, GOOD_OML, make_message("OML-11", patient_id="9999999"))
    write_message(root, GOOD_SAME_PATIENT, make_message("OMP-11", patient_id=BAD_PID))
    return root


def _outcomes(root: Path, workers: int = 1) -> dict[str, FileOutcome]:
    return {o.relpath: o for o in read_tree(root, workers=workers)}


def _assert_others_read(outcomes: dict[str, FileOutcome]) -> None:
    for rel in (GOOD_ADT, GOOD_OML, GOOD_SAME_PATIENT):
        o = outcomes[rel]
        assert o.status is Status.READ, f"{rel}: {o.reason}"
        assert o.records


def _assert_one_line(reason: str) -> None:
    assert reason
    assert "\n" not in reason
    assert "\r" not in reason


def _quarantine_one(root: Path, rel: str, data: bytes) -> FileOutcome:
    """Write the good files and ``data`` at ``rel``; the bad file is quarantined, the others are read."""
    _good_tree(root)
    write_tree(root, {rel: data})
    outcomes = _outcomes(root)
    _assert_others_read(outcomes)
    assert len(outcomes) == 4
    o = outcomes[rel]
    assert o.status is Status.QUARANTINED
    assert o.records == []
    _assert_one_line(o.reason)
    return o


def _omp01(**kw: str) -> str:
    return ssmix_relpath(BAD_PID, "20240401", "OMP-01", **kw)


VALID = encode_message(make_message("OMP-01"))


# -- bytes that are not an ISO-2022-JP HL7 message ---------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    assert _quarantine_one(tmp_path, _omp01(), b"").reason == "empty file"


def test_truncated_mid_segment(tmp_path: Path) -> None:
    cut = VALID[: VALID.index(b"\rRXR") - 10]
    o = _quarantine_one(tmp_path, _omp01(), cut)
    assert o.reason.startswith("truncated")
    assert f"after {len(cut)} bytes" in o.reason


def test_truncated_inside_a_kanji_run_at_a_character_boundary(tmp_path: Path) -> None:
    start = VALID.index(b"\x1b$B") + 3
    cut = VALID[: start + 2]  # one whole kanji, no return to ASCII, no segment end
    o = _quarantine_one(tmp_path, _omp01(), cut)
    assert o.reason.startswith("truncated")


def test_truncated_inside_a_kanji(tmp_path: Path) -> None:
    start = VALID.index(b"\x1b$B") + 3
    cut = VALID[: start + 3]  # one whole kanji, then half of the next
    o = _quarantine_one(tmp_path, _omp01(), cut)
    assert o.reason.startswith("not ISO-2022-JP")
    assert "double-byte" in o.reason
    assert f"offset {start + 2}" in o.reason  # the broken half, not the run's start


def test_shift_jis_content_names_the_encoding_and_offset(tmp_path: Path) -> None:
    text = "\r".join(make_message("OMP-01")) + "\r\x1c"
    raw = text.encode("cp932")
    first_high = next(i for i, b in enumerate(raw) if b >= 0x80)
    o = _quarantine_one(tmp_path, _omp01(), raw)
    assert "Shift_JIS" in o.reason
    assert f"offset {first_high}" in o.reason
    assert f"0x{raw[first_high]:02x}" in o.reason


def test_utf8_content_names_the_encoding(tmp_path: Path) -> None:
    raw = ("\r".join(make_message("OMP-01")) + "\r\x1c").encode("utf-8")
    first_high = next(i for i, b in enumerate(raw) if b >= 0x80)
    o = _quarantine_one(tmp_path, _omp01(), raw)
    assert "UTF-8" in o.reason
    assert f"offset {first_high}" in o.reason


def test_binary_garbage(tmp_path: Path) -> None:
    raw = bytes((i * 37 + 11) % 256 for i in range(4096))
    o = _quarantine_one(tmp_path, _omp01(), raw)
    assert o.reason.startswith("not ISO-2022-JP")
    assert "offset" in o.reason


def test_ascii_garbage_with_a_terminator(tmp_path: Path) -> None:
    o = _quarantine_one(tmp_path, _omp01(), b"hello world\r")
    assert o.reason == "not an HL7 message: it does not start with an MSH segment"


def test_half_width_kana_run_open_at_a_segment_end_does_not_stop_the_tree(tmp_path: Path) -> None:
    _good_tree(tmp_path)
    rel = _omp01()
    write_tree(tmp_path, {rel: VALID.replace(b"|HIS|", b"|\x1b(I1\r", 1)})
    outcomes = _outcomes(tmp_path)
    _assert_others_read(outcomes)
    assert outcomes[rel].status in (Status.READ, Status.QUARANTINED)
    _assert_one_line(outcomes[rel].reason or "read")


def test_unknown_escape_sequence(tmp_path: Path) -> None:
    raw = VALID.replace(b"\x1b$B", b"\x1b$Z", 1)
    o = _quarantine_one(tmp_path, _omp01(), raw)
    assert "escape sequence" in o.reason


# -- file names and folders --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1234567_20240401_OMP-01_000000000000001_20240401120000000_01", "expected 7 fields"),
        ("1234567_20240401_OMP-01_000000000000001_20240401120000000_01_3", "condition flag '3'"),
        ("1234567_20111332_OMP-01_000000000000001_20240401120000000_01_1", "care date '20111332'"),
        ("1234567_20240401_omp01_000000000000001_20240401120000000_01_1", "data type 'omp01'"),
        ("1234567_20240401_OMP-01_000000000000001_2024_01_1", "timestamp '2024'"),
        ("1234567_20240401_OMP-01__20240401120000000_01_1", "order number"),
        ("_20240401_OMP-01_000000000000001_20240401120000000_01_1", "patient ID"),
        ("1234567_20240401_OMP-01_000000000000001_20240401120000000__1", "department"),
    ],
)
def test_bad_file_name(tmp_path: Path, name: str, expected: str) -> None:
    rel = f"123/456/{BAD_PID}/20240401/OMP-01/{name}"
    o = _quarantine_one(tmp_path, rel, VALID)
    assert o.reason.startswith("bad file name")
    assert expected in o.reason
    assert o.name is None


@pytest.mark.parametrize(
    ("folder", "what"),
    [
        ("123/456/7654321/20240401/OMP-01", "patient"),
        (f"999/456/{BAD_PID}/20240401/OMP-01", "patient prefix"),
        (f"123/456/{BAD_PID}/20240402/OMP-01", "care date"),
        (f"123/456/{BAD_PID}/-/OMP-01", "care date '-'"),
        (f"123/456/{BAD_PID}/20240401/OMP-11", "data type"),
    ],
)
def test_wrong_folder(tmp_path: Path, folder: str, what: str) -> None:
    name = _omp01().rsplit("/", 1)[1]
    o = _quarantine_one(tmp_path, f"{folder}/{name}", VALID)
    assert o.reason == (
        f"wrong folder: filed under {folder} but its name belongs in 123/456/{BAD_PID}/20240401/OMP-01"
    ), what


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("README.txt", "a file where patient-ID folders belong"),
        ("123/notes.txt", "a file where patient-ID folders belong"),
        ("123/456/notes.txt", "a file where patient folders belong"),
        (f"123/456/{BAD_PID}/notes.txt", "a file where care-date folders belong"),
        (f"123/456/{BAD_PID}/20240401/notes.txt", "a file where data-type folders belong"),
    ],
)
def test_stray_file_where_a_folder_belongs(tmp_path: Path, rel: str, expected: str) -> None:
    o = _quarantine_one(tmp_path, rel, b"stray")
    assert o.reason == f"not in the SS-MIX2 layout: {expected}"


def test_directory_where_a_message_file_belongs(tmp_path: Path) -> None:
    _good_tree(tmp_path)
    rel = _omp01()
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / rel / "inner").write_bytes(VALID)
    outcomes = _outcomes(tmp_path)
    _assert_others_read(outcomes)
    o = outcomes[rel]
    assert o.status is Status.QUARANTINED
    assert "not a regular file" in o.reason
    assert f"{rel}/inner" not in outcomes  # nothing below a quarantined folder is read as a message


def test_symlink_where_a_message_file_belongs(tmp_path: Path) -> None:
    _good_tree(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(VALID)
    rel = _omp01()
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).symlink_to(target)
    outcomes = {o.relpath: o for o in read_tree(tmp_path) if o.relpath != "elsewhere"}
    _assert_others_read(outcomes)
    assert outcomes[rel].status is Status.QUARANTINED
    assert "not a regular file" in outcomes[rel].reason


def test_read_file_outside_the_layout(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a/b/msg": VALID})
    o = read_file(str(tmp_path), "a/b/msg")
    assert o.status is Status.QUARANTINED
    assert o.reason.startswith("not in the SS-MIX2 layout")


def test_read_file_that_does_not_exist(tmp_path: Path) -> None:
    o = read_file(str(tmp_path), _omp01())
    assert o.status is Status.QUARANTINED
    assert o.reason.startswith("cannot read")


# -- structure ---------------------------------------------------------------------------------------------


def _segments_case(segments: list[str]) -> bytes:
    return encode_message(segments)


ORC = "ORC|NW|000000000000001||1|||||20240401103045"
RXE = "RXE||108665201^ダーゼン錠（５mg)^HOT9|1||TAB^錠^MR9P"
PID_SEG = f"PID|0001||{BAD_PID}^^^^PI||患者^太郎^^^^^L^I"
MSH_OMP01 = msh("OMP-01")


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        pytest.param(
            [MSH_OMP01, ORC, RXE], "no PID segment (truncated or not a complete message)", id="no-PID"
        ),
        pytest.param(
            [PID_SEG, MSH_OMP01, ORC, RXE],
            "not an HL7 message: it does not start with an MSH segment",
            id="first-not-MSH",
        ),
        pytest.param(
            [MSH_OMP01, PID_SEG, ORC, RXE, MSH_OMP01, PID_SEG, ORC, RXE],
            "second MSH segment at line 5 (two messages in one file)",
            id="second-MSH",
        ),
        pytest.param(
            [MSH_OMP01, PID_SEG, "ZZ9", ORC, RXE],
            "segment ZZ9 at line 3 is empty (no fields)",
            id="empty-segment",
        ),
        pytest.param(
            [MSH_OMP01, PID_SEG, ORC, "this is a note typed into the file", RXE],
            "line 4 is not an HL7 segment",
            id="not-a-segment",
        ),
        pytest.param(
            [MSH_OMP01, PID_SEG, ORC, "rxe||108665201^ダーゼン^HOT9|1"],
            "line 4 is not an HL7 segment",
            id="lower-case-id",
        ),
        pytest.param(
            [msh("ADT-00"), PID_SEG, ORC, RXE],
            "message type ADT in MSH-9 does not match data type OMP-01",
            id="MSH-9-mismatch",
        ),
        pytest.param(
            [MSH_OMP01.replace("RDE^O11^RDE_O11", ""), PID_SEG, ORC, RXE],
            "message type (none) in MSH-9 does not match data type OMP-01",
            id="MSH-9-empty",
        ),
        pytest.param(
            ["MSH", PID_SEG, ORC, RXE],
            "not an HL7 message: MSH does not declare field and encoding characters",
            id="MSH-without-fields",
        ),
        pytest.param(
            ["MSHx^~\\&|A", PID_SEG, ORC, RXE],
            "not an HL7 message: MSH does not declare field and encoding characters",
            id="MSH-bad-delimiters",
        ),
        pytest.param(
            [MSH_OMP01, PID_SEG, ORC, "TQ1|1||1013044400000000"],
            "no RXE segment (truncated or not a complete message)",
            id="OMP-01-no-RXE",
        ),
    ],
)
def test_structural_problem(tmp_path: Path, segments: list[str], expected: str) -> None:
    assert _quarantine_one(tmp_path, _omp01(), _segments_case(segments)).reason == expected


@pytest.mark.parametrize(
    ("data_type", "body", "expected"),
    [
        ("OMP-11", [ORC, "RXR|PO^口^HL70162"], "no RXA segment (truncated or not a complete message)"),
        ("OMP-02", [ORC, "RXR|IV^静脈内^HL70162"], "no RXE segment (truncated or not a complete message)"),
        ("OMP-12", [ORC], "no RXA segment (truncated or not a complete message)"),
    ],
)
def test_order_message_without_its_order_segment(
    tmp_path: Path, data_type: str, body: list[str], expected: str
) -> None:
    rel = ssmix_relpath(BAD_PID, "20240402", data_type)
    o = _quarantine_one(tmp_path, rel, encode_message(make_message(data_type, body=body)))
    assert o.reason == expected


@pytest.mark.parametrize(
    "data_type", ["ADT-00", "ADT-61", "PPR-01", "OMP-01", "OMP-02", "OMP-11", "OMP-12", "OML-11"]
)
def test_every_in_scope_type_without_pid(tmp_path: Path, data_type: str) -> None:
    segments = make_message(data_type)
    del segments[1]
    rel = ssmix_relpath(BAD_PID, "20240402", data_type)
    assert _quarantine_one(tmp_path, rel, encode_message(segments)).reason == (
        "no PID segment (truncated or not a complete message)"
    )


def test_file_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = max(len(VALID), 1000)  # above every good file of the tree
    monkeypatch.setattr(reader, "MAX_MESSAGE_BYTES", limit)
    big = encode_message([*make_message("OMP-01"), *(["NTE|1||" + "x" * 100] * 10)])
    assert len(big) > limit
    o = _quarantine_one(tmp_path, _omp01(), big)
    assert o.reason == f"too large for an SS-MIX2 message ({len(big)} bytes)"


def test_file_exactly_at_the_size_limit_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "MAX_MESSAGE_BYTES", len(VALID))
    assert _read_one(tmp_path, VALID).status is Status.READ


def _found(root: Path, rel: str, size: int) -> FoundFile:
    parts = tuple(rel.split("/"))
    st = (root / rel).stat()
    return FoundFile(rel, parts[:5], parts[5], size, st.st_mtime_ns)


@pytest.mark.parametrize("change", ["grew", "shrank"])
def test_file_changed_since_the_walk_is_read_whole(tmp_path: Path, change: str) -> None:
    """The walk's size is only a hint: a file rewritten between the walk and the read is read to its end."""
    rel = _omp01()
    longer = encode_message([*make_message("OMP-01"), "NTE|1||" + "x" * 5000])
    write_tree(tmp_path, {rel: VALID if change == "grew" else longer})
    stale_size = (tmp_path / rel).stat().st_size
    write_tree(tmp_path, {rel: longer if change == "grew" else VALID})
    o = reader.read_found(str(tmp_path), _found(tmp_path, rel, stale_size))
    assert o.status is Status.READ, o.reason
    assert o.records == read_file(str(tmp_path), rel).records


def test_file_that_grew_past_the_limit_after_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_MESSAGE_BYTES", len(VALID) + 10)
    rel = _omp01()
    write_tree(tmp_path, {rel: VALID})
    found = _found(tmp_path, rel, len(VALID))
    write_tree(tmp_path, {rel: VALID + b"x" * 5000})
    o = reader.read_found(str(tmp_path), found)
    assert o.status is Status.QUARANTINED
    assert o.reason == f"too large for an SS-MIX2 message ({len(VALID) + 5000} bytes)"


def test_walk_reports_size_and_mtime_of_every_file(tmp_path: Path) -> None:
    """The walk does not stat; read, skipped and quarantined files still carry their size and mtime."""
    _good_tree(tmp_path)
    skipped = ssmix_relpath(BAD_PID, "20240401", "OMG-01")
    wrong = ssmix_relpath(BAD_PID, "20240401", "OMP-01").replace("20240401/OMP-01/", "20240401/OMP-11/", 1)
    write_tree(tmp_path, {skipped: VALID, wrong: VALID, _omp01(): b"garbage"})
    outcomes = _outcomes(tmp_path)
    assert {o.status for o in outcomes.values()} == {Status.READ, Status.SKIPPED, Status.QUARANTINED}
    for rel, o in outcomes.items():
        st = (tmp_path / rel).stat()
        assert (o.size, o.mtime_ns) == (st.st_size, st.st_mtime_ns), rel


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    _good_tree(tmp_path)
    rel = _omp01()
    write_tree(tmp_path, {rel: VALID})
    (tmp_path / rel).chmod(0)
    try:
        outcomes = _outcomes(tmp_path)
    finally:
        (tmp_path / rel).chmod(0o644)
    _assert_others_read(outcomes)
    o = outcomes[rel]
    assert o.status is Status.QUARANTINED
    assert o.reason == "cannot read: Permission denied"


def test_read_error_is_quarantined_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same path as a mode-000 file, simulated so it also runs where tests run as root (in the Python
    walk: the compiled walk steps aside for a file it cannot open, tests/agent/test_fast_walk.py)."""
    rel = _omp01()
    real_open = os.open
    monkeypatch.setattr(reader, "_fast_walk", None)

    def failing_open(path: str, *args: Any, **kw: Any) -> Any:
        if str(path).endswith(rel):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", failing_open)
    o = _quarantine_one(tmp_path, rel, VALID)
    assert o.reason == "cannot read: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists folders whatever their mode")
def test_unlistable_patient_folder(tmp_path: Path) -> None:
    _good_tree(tmp_path)
    write_tree(tmp_path, {ssmix_relpath("5555555"): VALID})
    folder = tmp_path / "555/555/5555555"
    folder.chmod(0)
    try:
        outcomes = _outcomes(tmp_path)
    finally:
        folder.chmod(0o755)
    _assert_others_read(outcomes)
    o = outcomes["555/555/5555555"]
    assert o.status is Status.QUARANTINED
    assert o.reason == "cannot list folder: Permission denied"


# -- what is tolerated -------------------------------------------------------------------------------------


def _read_one(root: Path, raw: bytes, data_type: str = "OMP-01") -> FileOutcome:
    rel = ssmix_relpath(BAD_PID, "20240401", data_type)
    write_tree(root, {rel: raw})
    return read_file(str(root), rel)


def _reference_records(root: Path) -> list[object]:
    o = _read_one(root / "ref", VALID)
    assert o.status is Status.READ
    return list(o.records)


@pytest.mark.parametrize(
    ("label", "transform"),
    [
        ("LF", lambda b: b.replace(b"\r", b"\n")),
        ("CRLF", lambda b: b.replace(b"\r", b"\r\n")),
        ("no trailing FS", lambda b: b.removesuffix(b"\x1c")),
        ("no trailing FS, LF", lambda b: b.removesuffix(b"\x1c").replace(b"\r", b"\n")),
        ("MLLP start byte", lambda b: b"\x0b" + b),
        ("blank lines", lambda b: b.replace(b"\r", b"\r\r")),
    ],
)
def test_tolerated_framing_is_read(tmp_path: Path, label: str, transform: Callable[[bytes], bytes]) -> None:
    o = _read_one(tmp_path / "t", transform(VALID))
    assert o.status is Status.READ, f"{label}: {o.reason}"
    assert list(o.records) == _reference_records(tmp_path)


def test_full_mllp_framing_is_read(tmp_path: Path) -> None:
    o = _read_one(tmp_path / "t", b"\x0b" + VALID + b"\r")
    assert o.status is Status.READ, o.reason
    assert list(o.records) == _reference_records(tmp_path)


def test_pid3_differing_from_the_file_name_is_a_warning(tmp_path: Path) -> None:
    raw = encode_message(make_message("ADT-00", patient_id="7654321"))
    o = _read_one(tmp_path, raw, "ADT-00")
    assert o.status is Status.READ
    assert o.warnings == ["PID-3 differs from the file's patient ID"]
    patient = o.records[0]
    assert isinstance(patient, Patient)
    assert patient.key.patient_id == BAD_PID  # the file name is authoritative


def test_records_of_a_superseded_file_are_read(tmp_path: Path) -> None:
    rel = ssmix_relpath(BAD_PID, "20240401", "OMP-01", flag="2")
    write_tree(tmp_path, {rel: VALID})
    o = read_file(str(tmp_path), rel)
    assert o.status is Status.READ
    assert o.name is not None and not o.name.current
    assert isinstance(o.records[0], Prescription)


# -- the whole tree ----------------------------------------------------------------------------------------


def _mixed_tree(root: Path) -> Path:
    """Many patients, good and bad files, stray entries at several levels."""
    _good_tree(root)
    for i in range(12):
        pid = f"{i:03d}{i:03d}{i}"
        write_message(root, ssmix_relpath(pid, "20240401", "OMP-01"), make_message("OMP-01", patient_id=pid))
        write_message(root, ssmix_relpath(pid, "-", "ADT-00"), make_message("ADT-00", patient_id=pid))
        write_tree(root, {ssmix_relpath(pid, "20240402", "OMP-01"): VALID[: 30 + i]})
        write_tree(root, {ssmix_relpath(pid, "20240403", "OMD"): b"opaque"})
    write_tree(root, {"stray.txt": b"x", "123/456/stray": b"x", f"123/456/{BAD_PID}/-/stray": b"x"})
    return root


def test_read_tree_with_two_workers_gives_the_same_outcomes_in_the_same_order(tmp_path: Path) -> None:
    root = _mixed_tree(tmp_path)
    one = list(read_tree(root, workers=1, batch=3))
    two = list(read_tree(root, workers=2, batch=3))
    assert one == two
    assert list(read_tree(root, workers=2, batch=1000)) == list(read_tree(root, workers=1, batch=1000))
    statuses = {s: sum(o.status is s for o in one) for s in Status}
    assert statuses == {Status.READ: 27, Status.SKIPPED: 12, Status.QUARANTINED: 15}


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(1, id="batch-1"),  # every patient folder is yielded before the walk moves on: sorted
        pytest.param(3, id="batch-3"),
        pytest.param(1000, id="batch-1000"),
    ],
)
def test_read_tree_yields_files_in_sorted_path_order(tmp_path: Path, batch: int) -> None:
    root = _mixed_tree(tmp_path)
    paths = [o.relpath for o in read_tree(root, workers=1, batch=batch)]
    assert paths == sorted(paths)


def test_read_tree_of_a_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_tree(tmp_path / "absent"))


# -- agent check --fail-on-quarantine ----------------------------------------------------------------------


def _check(root: Path, *extra: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(
        app, ["agent", "check", "--ssmix2", str(root), "--json", "--workers", "1", *extra]
    )
    return result.exit_code, json.loads(result.stdout)


def test_fail_on_quarantine_exits_0_for_a_clean_tree(tmp_path: Path) -> None:
    root = _good_tree(tmp_path)
    code, report = _check(root, "--fail-on-quarantine")
    assert code == 0
    assert report["quarantined"] == 0
    assert report["read"] == 3


def test_fail_on_quarantine_exits_1_when_a_file_is_quarantined(tmp_path: Path) -> None:
    root = _good_tree(tmp_path)
    write_tree(root, {_omp01(): b""})
    code, report = _check(root, "--fail-on-quarantine")
    assert code == 1
    assert report["quarantine"] == [
        {"file": _omp01().rsplit("/", 1)[1], "path": _omp01(), "reason": "empty file"}
    ]
    # without the flag the same tree is a successful check that reports the file
    code, report = _check(root)
    assert code == 0
    assert report["quarantined"] == 1
