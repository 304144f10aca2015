"""The compiled walk of a patient folder (agent/ssmix2/_fastwalk.c) against the reader's Python walk.

Wherever it answers, every file must end exactly as through the Python walk (path, status, name, reason,
size, mtime, records, warnings, in the same order); wherever a folder is not plain (a stray file or link, a
FIFO, a name that is not ASCII, a folder where a file belongs, a file that cannot be opened), it must step
aside (None) for the whole patient folder, and the Python walk then words every reason.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.ssmix2.reader as reader
from agent.ssmix2.layout import IN_SCOPE
from agent.ssmix2.reader import FileOutcome, read_tree
from hakobune.synth import SSMIX2_DIR, generate
from tests.conftest import encode_message, make_message, ssmix_relpath, write_message, write_tree

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
    for date, dtype, name, data, size, mtime_ns, fields in entries:
        assert fields == tuple(name.split("_"))  # well formed and where it belongs
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


# -- file names: the walk gives the fields of the ones it finds well formed and in their folders ----------
#: Per field of a name: good values, then values near them (each alone makes the name bad).
_NAME_FIELDS = (
    ([PID], ["1234568", "", "12.4567", "abcDEF1"]),
    (
        ["20240401", "20240229", "20000229", "00010101", "-"],
        [
            "20230229",
            "19000229",
            "00000101",
            "20241301",
            "20240431",
            "20240400",
            "2024040",
            "202404011",
            "--",
            "2024O401",
        ],
    ),
    (
        ["OML-11", "ADT-00", "OMG-01", "A1Z", "OM1"],
        ["OML-1", "oml-11", "OML11", "OM-11", "OMLX11", "OML-1a", "1ML"],
    ),
    (["000000000001", "a1"], ["", "0-1"]),
    (["20240401120000000", "20240401", "202404011"], ["2024040", "202404011200000000", "2024040112000000a"]),
    (["01", "-", "ab"], ["", "0-1", "--"]),
    (["1", "2", "0"], ["3", "", "11"]),
)


@st.composite
def _placed_names(draw: st.DrawFn) -> tuple[str, str, str]:
    """(date folder, type folder, file name): well formed names, or with one or two fields (or the number
    of fields) wrong; mostly in their own folders."""
    one = st.integers(0, len(_NAME_FIELDS)).map(lambda i: {i})
    bad = draw(st.one_of(st.just(set()), one, one, st.sets(st.integers(0, len(_NAME_FIELDS)), max_size=2)))
    fields = [draw(st.sampled_from(off if i in bad else ok)) for i, (ok, off) in enumerate(_NAME_FIELDS)]
    if len(_NAME_FIELDS) in bad:  # six or eight fields
        fields = draw(st.sampled_from([fields[:6], [*fields, "x"]]))
    date = draw(st.sampled_from([fields[1]] * 4 + ["20240401", "-"])) or "-"
    dtype = draw(st.sampled_from([fields[2]] * 4 + ["OML-11"])) or "OML-11"
    return date, dtype, "_".join(fields)


@needs_fast
@settings(max_examples=200, deadline=None)
@given(
    st.lists(_placed_names(), min_size=1, max_size=4),
    st.sampled_from([PATIENT, PATIENT, PATIENT, "123/999/1234567"]),
)
def test_file_names_end_the_same_through_both_walks(names: list[tuple[str, str, str]], patient: str) -> None:
    """Well formed or not, in its folders or not: every file ends as through the Python walk (which words
    the reasons), and the compiled walk gives the fields exactly of the names the Python one takes."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        root = Path(tmp)
        message = encode_message(make_message("OML-11", patient_id=PID))
        write_tree(root, {f"{patient}/{date}/{dtype}/{name}": message for date, dtype, name in names})
        outcomes = _both(root, monkeypatch)
        entries = reader._fast_walk(str(root / patient), IN_SCOPE, reader.MAX_MESSAGE_BYTES)
        assert entries is not None
        for (date, dtype, name, *_, fields), o in zip(entries, outcomes, strict=True):
            taken = o[2] is not None and not str(o[3]).startswith("wrong folder")
            assert (fields is not None and patient == PATIENT) == taken, (date, dtype, name, o[3])
            assert fields is None or fields == tuple(name.split("_"))


@needs_fast
def test_each_near_name_ends_the_same_through_both_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every near value of every field, alone in an otherwise good name in its own folders (the boundaries
    the generated names above meet only now and then)."""
    good = [ok[0] for ok, _ in _NAME_FIELDS]
    names = ["_".join(good)]
    for i, (ok, off) in enumerate(_NAME_FIELDS):
        names += ["_".join([*good[:i], value, *good[i + 1 :]]) for value in ok[1:] + off]
    message = encode_message(make_message("OML-11", patient_id=PID))
    placed = {}
    for name in names:
        fields = name.split("_")
        placed[f"{PATIENT}/{fields[1] or '-'}/{fields[2] or 'OML-11'}/{name}"] = message
    write_tree(tmp_path, placed)
    outcomes = _both(tmp_path, monkeypatch)
    assert len(outcomes) == len(names)
    taken = sorted(
        o[0].rsplit("/", 1)[1] for o in outcomes if o[2] is not None and not o[3].startswith("wrong")
    )
    assert len(taken) == 1 + sum(len(ok) - 1 for ok, _ in _NAME_FIELDS)
