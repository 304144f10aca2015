"""The consent registry: CSV import (encodings, refusals), changes, history, snapshot, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.consent import (
    ConsentFileError,
    ConsentRegistry,
    ConsentSnapshot,
    ImportResult,
    Scope,
)
from agent.home import HOME_ENVVAR, state_db_path
from agent.state import StateDB
from hakobune.cli import app
from hakobune.errors import InputError


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB.open(tmp_path / "home" / "state.db") as opened:
        yield opened


@pytest.fixture
def registry(db: StateDB) -> ConsentRegistry:
    return ConsentRegistry(db)


class Clock:
    """A settable clock so timestamps in history are predictable."""

    def __init__(self) -> None:
        self.now = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def write(tmp_path: Path, content: bytes | str, name: str = "consent.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# --- import: accepted files ---------------------------------------------------------------------------


def test_import_utf8_lf(tmp_path: Path, registry: ConsentRegistry) -> None:
    path = write(tmp_path, "patient_id,scope\n0001234,all\n0005678,research\n")
    result = registry.import_csv(path)
    assert result == ImportResult(file=str(path), rows=2, added=2, changed=0, unchanged=0)
    assert registry.all() == {"0001234": Scope.ALL, "0005678": Scope.RESEARCH}
    assert registry.entries()[0].source == "csv:consent.csv"


def test_import_utf8_bom_crlf_case_and_spaces(tmp_path: Path, registry: ConsentRegistry) -> None:
    content = "\ufeff Patient_ID , SCOPE \r\n0001, All \r\n\r\n  \r\n0002,RESEARCH\r\n,\r\n"
    path = write(tmp_path, content)
    result = registry.import_csv(path)
    assert (result.rows, result.added) == (2, 2)
    assert registry.all() == {"0001": Scope.ALL, "0002": Scope.RESEARCH}


def test_import_cp932_with_japanese(tmp_path: Path, registry: ConsentRegistry) -> None:
    # Excel on Japanese Windows saves CP932; full-width digits typed there must match half-width IDs.
    content = "patient_id,scope\r\n０００１２３４,all\r\n患者７,research\r\n"
    path = write(tmp_path, content.encode("cp932"))
    registry.import_csv(path)
    assert registry.all() == {"0001234": Scope.ALL, "患者7": Scope.RESEARCH}


def test_import_shift_jis_bytes_that_are_not_utf8(tmp_path: Path, registry: ConsentRegistry) -> None:
    data = "patient_id,scope\n山田001,all\n".encode("shift_jis")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    registry.import_csv(write(tmp_path, data))
    assert registry.get("山田001") is Scope.ALL


def test_import_quoted_excel_fields_and_trailing_empty_cells(
    tmp_path: Path, registry: ConsentRegistry
) -> None:
    path = write(tmp_path, 'patient_id,scope,,\n"0001","all",,\n')
    registry.import_csv(path)
    assert registry.all() == {"0001": Scope.ALL}


def test_import_same_patient_twice_with_same_scope_is_fine(tmp_path: Path, registry: ConsentRegistry) -> None:
    result = registry.import_csv(write(tmp_path, "patient_id,scope\n1,all\n1,ALL\n"))
    assert (result.rows, result.added, result.unchanged) == (2, 1, 0)


def test_reimport_counts_added_changed_unchanged_and_keeps_absent(
    tmp_path: Path, registry: ConsentRegistry
) -> None:
    registry.import_csv(write(tmp_path, "patient_id,scope\n1,all\n2,research\n3,all\n", "a.csv"))
    result = registry.import_csv(write(tmp_path, "patient_id,scope\n1,all\n2,all\n4,research\n", "b.csv"))
    assert (result.rows, result.added, result.changed, result.unchanged) == (3, 1, 1, 1)
    # Patient 3 is not in b.csv: an import never withdraws an opt-out.
    assert registry.all() == {"1": Scope.ALL, "2": Scope.ALL, "3": Scope.ALL, "4": Scope.RESEARCH}
    sources = {e.patient_id: e.source for e in registry.entries()}
    assert sources == {"1": "csv:a.csv", "2": "csv:b.csv", "3": "csv:a.csv", "4": "csv:b.csv"}
    assert [(h.old, h.new, h.source) for h in registry.history("2")] == [
        (None, Scope.RESEARCH, "csv:a.csv"),
        (Scope.RESEARCH, Scope.ALL, "csv:b.csv"),
    ]
    assert len(registry.history("1")) == 1  # unchanged rows record no event


def test_header_only_file_imports_nothing(tmp_path: Path, registry: ConsentRegistry) -> None:
    result = registry.import_csv(write(tmp_path, "patient_id,scope\n"))
    assert (result.rows, result.added) == (0, 0)


# --- import: refusals ---------------------------------------------------------------------------------

REFUSALS = [
    pytest.param(b"0001,all\n0002,research\n", 1, "expected the header 'patient_id,scope'", id="no-header"),
    pytest.param(b"id,scope\n1,all\n", 1, "expected the header", id="wrong-header"),
    pytest.param(b"\n\npatient_id\n1\n", 3, "expected the header", id="header-one-column"),
    pytest.param(b"", 1, "empty file", id="empty-file"),
    pytest.param(b"\r\n\r\n", 1, "empty file", id="blank-file"),
    pytest.param(
        b"patient_id,scope\n1,all\n\n2,research\n3,research\n4,all\n5,none\n",
        7,
        "unknown scope 'none' (expected all or research)",
        id="unknown-scope",
    ),
    pytest.param(b"patient_id,scope\n1,all\n2,\n", 3, "empty scope", id="empty-scope"),
    pytest.param(b"patient_id,scope\n1,all\n ,all\n", 3, "empty patient_id", id="empty-id"),
    pytest.param(
        b"patient_id,scope\r\n\xe3\x80\x80,all\r\n", 2, "empty patient_id", id="ideographic-space-id"
    ),
    pytest.param(b"patient_id,scope\n1,all\n2\n", 3, "expected 2 fields", id="one-field"),
    pytest.param(b"patient_id,scope\n1,all,extra\n", 2, "expected 2 fields", id="three-fields"),
    pytest.param(
        b"patient_id,scope\n1,all\n2,all\n1,research\n",
        4,
        "patient listed twice with different scopes (first on line 2)",
        id="conflicting-duplicate",
    ),
    pytest.param(
        b"patient_id,scope\n1,all\n2,all\n\x81\x20,all\n", 4, "not UTF-8 or Shift_JIS/CP932", id="undecodable"
    ),
    pytest.param(
        b"\xef\xbb\xbfpatient_id,scope\r\n1,all\r\n\x82\xa0,all\r\n",
        3,
        "not UTF-8 despite its BOM",
        id="bom-but-cp932",
    ),
    pytest.param(b'patient_id,scope\n"1"x,all\n', 2, "malformed CSV", id="bad-quoting"),
    pytest.param(
        b"patient_id,scope\n1,all\n\xff\xfe,all\n", 3, "unexpected character U+F8F3", id="cp932-oddity"
    ),
    pytest.param(b"patient_id,scope\n1,all\n2\x00,all\n", 3, "unexpected character U+0000", id="nul-byte"),
    pytest.param(
        "patient_id,scope\r\n1,all\r\n".encode("utf-16"), 1, "UTF-16 text", id="utf16-excel-unicode-text"
    ),
]


@pytest.mark.parametrize(("content", "line", "reason"), REFUSALS)
def test_bad_file_is_refused_whole_with_file_line_and_reason(
    tmp_path: Path, registry: ConsentRegistry, content: bytes, line: int, reason: str
) -> None:
    registry.set("already", Scope.RESEARCH)
    path = write(tmp_path, content)
    with pytest.raises(ConsentFileError) as info:
        registry.import_csv(path)
    message = str(info.value)
    assert isinstance(info.value, InputError)
    assert message.startswith(f"{path} line {line}: ")
    assert reason in message
    assert "\n" not in message
    assert info.value.line == line
    assert info.value.path == str(path)
    assert registry.all() == {"already": Scope.RESEARCH}  # nothing imported
    assert len(registry.history("1")) == 0


def test_refusal_never_names_the_patient(tmp_path: Path, registry: ConsentRegistry) -> None:
    path = write(tmp_path, "patient_id,scope\nSECRET-ID-42,all\nSECRET-ID-42,research\nSECRET-ID-43,nope\n")
    with pytest.raises(ConsentFileError) as info:
        registry.import_csv(path)
    assert "SECRET" not in str(info.value)


def test_message_matches_the_documented_example(
    tmp_path: Path, registry: ConsentRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "patient_id,scope\n1,all\n2,all\n3,all\n4,all\n5,all\n6,none\n")
    with pytest.raises(ConsentFileError) as info:
        registry.import_csv(Path("consent.csv"))
    assert str(info.value) == "consent.csv line 7: unknown scope 'none' (expected all or research)"


def test_missing_file_is_an_input_error(tmp_path: Path, registry: ConsentRegistry) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: cannot read"):
        registry.import_csv(tmp_path / "nope.csv")


def test_refused_file_leaves_earlier_import_intact(tmp_path: Path, registry: ConsentRegistry) -> None:
    registry.import_csv(write(tmp_path, "patient_id,scope\n1,all\n2,research\n", "good.csv"))
    with pytest.raises(ConsentFileError):
        registry.import_csv(write(tmp_path, "patient_id,scope\n2,all\n3,all\n4,maybe\n", "bad.csv"))
    assert registry.all() == {"1": Scope.ALL, "2": Scope.RESEARCH}


# --- set / remove / history ---------------------------------------------------------------------------


def test_set_remove_and_history(db: StateDB) -> None:
    clock = Clock()
    registry = ConsentRegistry(db, clock=clock)
    assert registry.set("p1", Scope.RESEARCH) is None
    clock.now = datetime(2025, 4, 2, 12, 0, tzinfo=UTC)
    assert registry.set("p1", "ALL", source="ticket-17") is Scope.RESEARCH
    assert registry.set("p1", Scope.ALL) is Scope.ALL  # no change, no event
    assert registry.get("p1") is Scope.ALL
    clock.now = datetime(2025, 4, 3, 8, 0, tzinfo=UTC)
    assert registry.remove("p1") is Scope.ALL
    assert registry.get("p1") is None
    assert registry.remove("p1") is None
    history = [(h.at, h.old, h.new, h.source) for h in registry.history("p1")]
    assert history == [
        ("2025-04-01T00:00:00Z", None, Scope.RESEARCH, "cli"),
        ("2025-04-02T12:00:00Z", Scope.RESEARCH, Scope.ALL, "ticket-17"),
        ("2025-04-03T08:00:00Z", Scope.ALL, None, "cli"),
    ]
    assert registry.history("someone-else") == []


def test_set_normalises_the_id_and_rejects_bad_input(registry: ConsentRegistry) -> None:
    registry.set(" ００４２ ", Scope.ALL)
    assert registry.get("0042") is Scope.ALL
    with pytest.raises(InputError, match="patient ID: empty"):
        registry.set("  ", Scope.ALL)
    with pytest.raises(InputError, match="unknown scope 'everything'"):
        registry.set("1", "everything")
    assert registry.all() == {"0042": Scope.ALL}


def test_exclusion_rules(registry: ConsentRegistry) -> None:
    registry.set("a", Scope.ALL)
    registry.set("r", Scope.RESEARCH)
    assert (registry.excluded_from_backup("a"), registry.excluded_from_research("a")) == (True, True)
    assert (registry.excluded_from_backup("r"), registry.excluded_from_research("r")) == (False, True)
    assert (registry.excluded_from_backup("n"), registry.excluded_from_research("n")) == (False, False)


def test_registry_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB.open(path) as db:
        ConsentRegistry(db).set("p", Scope.ALL)
    with StateDB.open(path) as db:
        assert ConsentRegistry(db).get("p") is Scope.ALL


# --- snapshot -----------------------------------------------------------------------------------------


def test_snapshot_filters_and_is_frozen(registry: ConsentRegistry) -> None:
    registry.set("a1", Scope.ALL)
    registry.set("a2", Scope.ALL)
    registry.set("r1", Scope.RESEARCH)
    snap = registry.snapshot()
    assert snap == ConsentSnapshot(frozenset({"a1", "a2"}), frozenset({"r1"}))
    assert len(snap) == 3
    patients = ["a1", "r1", "n1", "a2", "n2"]
    assert [p for p in patients if not snap.excluded_from_backup(p)] == ["r1", "n1", "n2"]
    assert [p for p in patients if not snap.excluded_from_research(p)] == ["n1", "n2"]
    assert [snap.get(p) for p in ("a1", "r1", "n1")] == [Scope.ALL, Scope.RESEARCH, None]
    # A snapshot is a view as of when it was taken.
    registry.remove("a1")
    assert snap.excluded_from_backup("a1")
    assert not registry.snapshot().excluded_from_backup("a1")
    with pytest.raises(AttributeError):
        snap.scope_all = frozenset()  # type: ignore[misc]


def test_snapshot_of_a_large_import(tmp_path: Path, registry: ConsentRegistry) -> None:
    lines = ["patient_id,scope"] + [f"{i:010d},{'all' if i % 3 else 'research'}" for i in range(30_000)]
    result = registry.import_csv(write(tmp_path, "\r\n".join(lines) + "\r\n"))
    assert (result.rows, result.added) == (30_000, 30_000)
    snap = registry.snapshot()
    assert len(snap.scope_all) == 20_000
    assert len(snap.scope_research) == 10_000
    assert snap.excluded_from_backup("0000000001")
    assert not snap.excluded_from_backup("0000000003")
    assert snap.excluded_from_research("0000000003")


def test_empty_snapshot() -> None:
    snap = ConsentSnapshot.empty()
    assert len(snap) == 0
    assert not snap.excluded_from_research("x")


# --- CLI ----------------------------------------------------------------------------------------------

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["agent", "consent", *args], env=env)
    return result.exit_code, result.output, result.exception


def test_cli_import_list_show(tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    csv_path = write(tmp_path, "patient_id,scope\r\n0001,all\r\n0002,research\r\n")
    code, out, _ = cli("import", str(csv_path), "--home", str(home), "--json")
    assert code == 0, out
    assert json.loads(out) == {"file": str(csv_path), "rows": 2, "added": 2, "changed": 0, "unchanged": 0}
    assert state_db_path(home).is_file()

    code, out, _ = cli("list", "--home", str(home), "--json")
    assert code == 0, out
    listing = json.loads(out)
    assert listing["total"] == 2
    assert listing["by_scope"] == {"all": 1, "research": 1}
    assert [(p["patient_id"], p["scope"], p["source"]) for p in listing["patients"]] == [
        ("0001", "all", "csv:consent.csv"),
        ("0002", "research", "csv:consent.csv"),
    ]
    assert set(listing["patients"][0]) == {"patient_id", "scope", "updated_at", "source"}

    code, out, _ = cli("list", "--home", str(home))
    assert code == 0
    assert "0001" in out and "research" in out

    code, out, _ = cli("show", "0002", "--home", str(home), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["patient_id"] == "0002"
    assert shown["scope"] == "research"
    assert [(h["old_scope"], h["new_scope"], h["source"]) for h in shown["history"]] == [
        (None, "research", "csv:consent.csv")
    ]


def test_cli_set_remove_via_envvar_home(tmp_path: Path) -> None:
    env = {HOME_ENVVAR: str(tmp_path / "h")}
    code, out, _ = cli("set", "p9", "RESEARCH", env=env)
    assert code == 0, out
    code, out, _ = cli("set", "p9", "all", env=env)
    assert code == 0
    assert "was research" in out
    code, out, _ = cli("remove", "p9", env=env)
    assert code == 0
    assert "withdrawn" in out
    code, out, _ = cli("remove", "p9", env=env)
    assert code == 0
    assert "nothing changed" in out
    with StateDB.open(tmp_path / "h" / "state.db") as db:
        registry = ConsentRegistry(db)
        assert registry.get("p9") is None
        assert [h.new for h in registry.history("p9")] == [Scope.RESEARCH, Scope.ALL, None]
    code, out, _ = cli("show", "p9", env=env)
    assert code == 0
    assert "current opt-out: (none)" in out


def test_cli_set_unknown_scope_is_a_usage_error(tmp_path: Path) -> None:
    code, _, _ = cli("set", "p1", "maybe", "--home", str(tmp_path / "h"))
    assert code == 2
    with StateDB.open(tmp_path / "h" / "state.db") as db:
        assert ConsentRegistry(db).all() == {}


def test_cli_bad_file_is_refused_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "h"
    cli("set", "kept", "all", "--home", str(home))
    bad = write(tmp_path, "patient_id,scope\n1,all\n2,none\n")
    code, _, exc = cli("import", str(bad), "--home", str(home))
    assert code != 0
    assert isinstance(exc, InputError)
    assert str(exc) == f"{bad} line 3: unknown scope 'none' (expected all or research)"
    code, out, _ = cli("list", "--home", str(home), "--json")
    assert [p["patient_id"] for p in json.loads(out)["patients"]] == ["kept"]


def test_cli_list_without_state_is_a_config_error_and_creates_nothing(tmp_path: Path) -> None:
    from hakobune.errors import ConfigError

    home = tmp_path / "typo"
    code, _, exc = cli("list", "--home", str(home))
    assert code != 0
    assert isinstance(exc, ConfigError)
    assert "no agent state" in str(exc)
    assert not home.exists()


def test_root_main_prints_one_line_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from hakobune.cli import main

    bad = write(tmp_path, "patient_id,scope\n1,all\n1,research\n")
    monkeypatch.setattr(
        sys, "argv", ["hakobune", "agent", "consent", "import", str(bad), "--home", str(tmp_path / "h")]
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2  # bad input (InputError) exits 2
    err = capsys.readouterr().err
    assert (
        err
        == f"hakobune: error: {bad} line 3: patient listed twice with different scopes (first on line 2)\n"
    )
