"""The compiled walk of a patient folder (agent/ssmix2/_fastwalk.c) against the reader's Python walk.

Wherever it answers, every file must end exactly as through the Python walk (path, status, name, reason,
size, mtime, records, warnings, in the same order); wherever a folder is not plain (a stray file or link, a
FIFO, a name that is not ASCII, a folder where a file belongs, a file that cannot be opened), it must step
aside (None) for the whole patient folder, and the Python walk then words every reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import agent.ssmix2.reader as reader
from agent.ssmix2.layout import IN_SCOPE
from agent.ssmix2.reader import FileOutcome, read_tree
from hakobune.synth import SSMIX2_DIR, generate
from tests.conftest import make_message, ssmix_relpath, write_message, write_tree

PID = "1234567"
PATIENT = "123/456/1234567"


def test_the_compiled_walk_is_built_where_ci_runs() -> None:
    if reader._fast_walk is None:
        if os.environ.get("CI"):
            pytest.fail("agent.ssmix2._fastwalk is not built (make setup compiles it with gcc)")
        pytest.skip("compiled walk not built here")


needs_fast = pytest.mark.skipif(reader._fast_walk is None, reason="compiled walk not built")


def _fields(o: FileOutcome) -> tuple[object, ...]:
    return (o.relpath, o.status, o.name, o.reason, o.size, o.mtime_ns, o.records, o.warnings)


def _both(root: Path, monkeypatch: pytest.MonkeyPatch, workers: int = 1) -> list[tuple[object, ...]]:
    fast = [_fields(o) for o in read_tree(root, workers=workers)]
    with monkeypatch.context() as m:
        m.setattr(reader, "_fast_walk", None)
        slow = [_fields(o) for o in read_tree(root, workers=1)]
    assert fast == slow
    return fast


@needs_fast
@pytest.mark.parametrize("workers", [1, 2])
def test_a_synthetic_hospital_reads_the_same_through_both_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    generate(tmp_path, patients=40, days=5, seed=3, workers=1)
    root = tmp_path / SSMIX2_DIR
    outcomes = _both(root, monkeypatch, workers)
    assert len(outcomes) > 300
    statuses = {str(o[1]) for o in outcomes}
    assert {"read", "skipped"} <= statuses  # OMG-01 and ADT-22 files are counted, not read


@needs_fast
def test_plain_folders_are_read_in_order_and_other_types_only_stated(tmp_path: Path) -> None:
    assert reader._fast_walk is not None
    adt = ssmix_relpath(PID, "-", "ADT-00", department="-")
    lab = ssmix_relpath(PID, "20240401", "OML-11")
    other = ssmix_relpath(PID, "20240401", "OMG-01")
    write_message(tmp_path, adt, make_message("ADT-00", patient_id=PID))
    write_message(tmp_path, lab, make_message("OML-11", patient_id=PID))
    write_tree(tmp_path, {other: b"not read"})
    entries = reader._fast_walk(str(tmp_path / PATIENT), IN_SCOPE, reader.MAX_MESSAGE_BYTES)
    assert entries is not None
    assert [(d, t) for d, t, *_ in entries] == [
        ("-", "ADT-00"),
        ("20240401", "OMG-01"),
        ("20240401", "OML-11"),
    ]
    for date, dtype, name, data, size, mtime_ns in entries:
        st = (tmp_path / PATIENT / date / dtype / name).stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert data == (
            None if dtype == "OMG-01" else (tmp_path / PATIENT / date / dtype / name).read_bytes()
        )


def _valid_patient(root: Path) -> None:
    write_message(root, ssmix_relpath(PID, "20240401", "OMP-11"), make_message("OMP-11", patient_id=PID))
    write_message(root, ssmix_relpath("0000001", "-", "ADT-00", department="-"), make_message("ADT-00"))


def _stray_file(root: Path) -> None:
    (root / PATIENT / "20240401" / "stray.txt").write_bytes(b"x")


def _symlink(root: Path) -> None:
    target = root / ssmix_relpath(PID, "20240401", "OMP-11")
    (target.parent / "link_1").symlink_to(target)


def _fifo(root: Path) -> None:
    os.mkfifo(root / PATIENT / "20240401" / "OMP-11" / f"{PID}_20240401_OMP-11_2_20240401120000000_01_1")


def _non_ascii(root: Path) -> None:
    (root / PATIENT / "20240401" / "OMP-11" / "京都_1").write_bytes(b"x")


def _folder_for_file(root: Path) -> None:
    (root / PATIENT / "20240401" / "OMP-11" / "folder").mkdir()


def _date_is_a_link(root: Path) -> None:
    (root / PATIENT / "20240402").symlink_to(root / PATIENT / "20240401")


@needs_fast
@pytest.mark.parametrize(
    "spoil",
    [_stray_file, _symlink, _fifo, _non_ascii, _folder_for_file, _date_is_a_link],
    ids=lambda f: f.__name__,
)
def test_anything_but_plain_folders_makes_it_step_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spoil: object
) -> None:
    assert reader._fast_walk is not None and callable(spoil)
    _valid_patient(tmp_path)
    assert reader._fast_walk(str(tmp_path / PATIENT), IN_SCOPE, reader.MAX_MESSAGE_BYTES) is not None
    spoil(tmp_path)
    assert reader._fast_walk(str(tmp_path / PATIENT), IN_SCOPE, reader.MAX_MESSAGE_BYTES) is None
    outcomes = _both(tmp_path, monkeypatch)
    assert any(str(o[1]) == "quarantined" for o in outcomes)
    assert any(str(o[1]) == "read" for o in outcomes)


@needs_fast
def test_a_file_too_large_is_quarantined_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _valid_patient(tmp_path)
    write_tree(tmp_path, {ssmix_relpath(PID, "20240402", "OML-11"): b"x" * 600})
    monkeypatch.setattr(reader, "MAX_MESSAGE_BYTES", 500)
    outcomes = _both(tmp_path, monkeypatch)
    too_large = [o for o in outcomes if "too large" in str(o[3])]
    assert len(too_large) == 1 and too_large[0][4] == 600


@needs_fast
def test_an_unopenable_file_makes_it_step_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that is gone, and (where the tests do not run as root, which opens anything) a mode-000
    file: the Python walk then words the reason."""
    _valid_patient(tmp_path)
    assert reader._fast_walk is not None
    missing = str(tmp_path / "123/456/7654321")
    assert reader._fast_walk(missing, IN_SCOPE, reader.MAX_MESSAGE_BYTES) is None
    if os.geteuid() != 0:
        f = tmp_path / ssmix_relpath(PID, "20240401", "OMP-11")
        f.chmod(0)
        try:
            assert reader._fast_walk(str(tmp_path / PATIENT), IN_SCOPE, reader.MAX_MESSAGE_BYTES) is None
            outcomes = _both(tmp_path, monkeypatch)
        finally:
            f.chmod(0o644)
        assert any(o[3] == "cannot read: Permission denied" for o in outcomes)


def test_the_python_walk_alone_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HAKOBUNE_PURE_PYTHON (or no compiler) gives the same outcomes, only slower."""
    monkeypatch.setenv("HAKOBUNE_PURE_PYTHON", "1")
    assert reader._load_fast_walk() is None
    _valid_patient(tmp_path)
    _both(tmp_path, monkeypatch)
