"""research.studies and ``hakobune research study …``: applications, decisions, the append-only registry."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from datetime import date
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hakobune.audit import read_entries, verify_log
from hakobune.cli import app
from hakobune.errors import InputError
from research.home import HOME_ENV, ResearchHome, resolve_home
from research.spec import DateRange
from research.studies import Refused, Registry, add_years, parse_items, state_of

PERIOD = DateRange(date(2022, 1, 1), date(2025, 12, 31))


@pytest.fixture
def studies_home(tmp_path: Path) -> ResearchHome:
    return ResearchHome(tmp_path / "center").ensure()


@pytest.fixture
def studies_protocol(tmp_path: Path) -> Path:
    p = tmp_path / "protocol-v1.pdf"
    p.write_bytes(b"%PDF-1.7 research protocol\n" * 100)
    return p


def _submit(reg: Registry, protocol: Path, items: tuple[str, ...] = ("demographics", "conditions")) -> str:
    return reg.submit(
        title="糖尿病の地域疫学",
        applicant="研究責任者",
        purpose="地域の糖尿病有病率の推定",
        protocol=protocol,
        items=items,
        period=PERIOD,
        today=date(2025, 3, 1),
    ).id


def test_submit_copies_the_protocol_and_records_the_application(
    studies_home: ResearchHome, studies_protocol: Path
) -> None:
    with Registry(studies_home) as reg:
        sid = _submit(reg, studies_protocol)
        second = _submit(reg, studies_protocol)
        study = reg.get(sid)
    assert (sid, second) == ("S2025-0001", "S2025-0002")
    copy = studies_home.protocols / sid / "protocol-v1.pdf"
    assert copy.read_bytes() == studies_protocol.read_bytes()
    assert study.protocol_sha256 == hashlib.sha256(studies_protocol.read_bytes()).hexdigest()
    assert study.items == ("demographics", "conditions")
    assert study.period == PERIOD
    assert oct(studies_home.registry.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": ("labs", "genome")}, "'genome' is not a data item"),
        ({"items": ()}, "name at least one data item"),
        ({"title": "  "}, "--title: must not be empty"),
        ({"period": DateRange(date(2025, 1, 1), date(2024, 1, 1))}, "ends before it starts"),
        ({"protocol": Path("/nonexistent/protocol.pdf")}, "protocol file not found"),
    ],
)
def test_submit_refuses_bad_applications(
    studies_home: ResearchHome, studies_protocol: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "title": "t",
        "applicant": "a",
        "purpose": "p",
        "protocol": studies_protocol,
        "items": ("labs",),
        "period": PERIOD,
    }
    args.update(kwargs)
    with Registry(studies_home) as reg, pytest.raises(InputError, match=message):
        reg.submit(**args)  # type: ignore[arg-type]
    with Registry(studies_home) as reg:
        assert reg.studies() == []


def test_decisions_and_states(studies_home: ResearchHome, studies_protocol: Path) -> None:
    with Registry(studies_home) as reg:
        sid = _submit(reg, studies_protocol)
        assert state_of(reg.latest(sid), date(2025, 3, 1)) == "submitted"
        d = reg.decide(
            sid,
            decision="approve",
            approver="委員長",
            conditions="年1回の報告",
            valid_from=date(2025, 4, 1),
            valid_until=date(2027, 3, 31),
        )
        assert (d.valid_from, d.valid_until, d.conditions) == (
            date(2025, 4, 1),
            date(2027, 3, 31),
            "年1回の報告",
        )
        assert state_of(d, date(2025, 3, 31)) == "not_yet_valid"
        assert state_of(d, date(2025, 4, 1)) == "approved"
        assert state_of(d, date(2027, 3, 31)) == "approved"
        assert state_of(d, date(2027, 4, 1)) == "expired"
        # a later decision revokes; another renews
        reg.decide(sid, decision="reject", approver="委員長", conditions="プロトコル違反")
        assert state_of(reg.latest(sid), date(2025, 6, 1)) == "rejected"
        reg.decide(
            sid,
            decision="approve",
            approver="委員長",
            valid_from=date(2025, 7, 1),
            valid_until=date(2026, 6, 30),
        )
        assert state_of(reg.latest(sid), date(2025, 8, 1)) == "approved"
        assert [x.decision for x in reg.decisions(sid)] == ["approve", "reject", "approve"]


def test_approval_is_at_most_two_years(studies_home: ResearchHome, studies_protocol: Path) -> None:
    with Registry(studies_home) as reg:
        sid = _submit(reg, studies_protocol)
        ok = reg.decide(
            sid, decision="approve", approver="x", valid_from=date(2025, 1, 1), valid_until=date(2026, 12, 31)
        )
        assert ok.valid_until == date(2026, 12, 31)
        with pytest.raises(InputError, match=r"longer than 2 years.*last possible day is 2026-12-31"):
            reg.decide(
                sid,
                decision="approve",
                approver="x",
                valid_from=date(2025, 1, 1),
                valid_until=date(2027, 1, 1),
            )
        with pytest.raises(InputError, match="before --valid-from"):
            reg.decide(
                sid,
                decision="approve",
                approver="x",
                valid_from=date(2025, 1, 1),
                valid_until=date(2024, 12, 31),
            )
        with pytest.raises(InputError, match="needs the last day"):
            reg.decide(sid, decision="approve", approver="x")
        with pytest.raises(InputError, match="rejection has no period"):
            reg.decide(sid, decision="reject", approver="x", valid_until=date(2025, 6, 1))
        with pytest.raises(InputError, match="'maybe' is not one of approve, reject"):
            reg.decide(sid, decision="maybe", approver="x")
        with pytest.raises(InputError, match="--approver: must not be empty"):
            reg.decide(sid, decision="reject", approver=" ")
        assert len(reg.decisions(sid)) == 1  # only the valid one was recorded
    assert add_years(date(2024, 2, 29), 2) == date(2026, 2, 28)


def test_require_active_explains_each_refusal(studies_home: ResearchHome, studies_protocol: Path) -> None:
    with Registry(studies_home) as reg:
        sid = _submit(reg, studies_protocol)
        with pytest.raises(Refused, match=f"study {sid}: not approved"):
            reg.require_active(sid, date(2025, 5, 1))
        reg.decide(
            sid, decision="approve", approver="x", valid_from=date(2025, 4, 1), valid_until=date(2025, 9, 30)
        )
        study, decision = reg.require_active(sid, date(2025, 5, 1))
        assert study.id == sid and decision.decision == "approve"
        with pytest.raises(Refused, match="expired on 2025-09-30"):
            reg.require_active(sid, date(2025, 10, 1))
        with pytest.raises(Refused, match="valid only from 2025-04-01"):
            reg.require_active(sid, date(2025, 3, 1))
        reg.decide(sid, decision="reject", approver="x")
        with pytest.raises(Refused, match="rejected by the ethics committee"):
            reg.require_active(sid, date(2025, 5, 1))
        with pytest.raises(Refused, match="no such study"):
            reg.require_active("S2025-0099", date(2025, 5, 1))
        with pytest.raises(Refused, match="not a study id"):
            reg.get("../etc")


def test_registry_is_append_only(studies_home: ResearchHome, studies_protocol: Path) -> None:
    with Registry(studies_home) as reg:
        sid = _submit(reg, studies_protocol)
        reg.decide(sid, decision="reject", approver="x")
    conn = sqlite3.connect(studies_home.registry)
    for sql in (
        "UPDATE decisions SET decision = 'approve'",
        "DELETE FROM decisions",
        "UPDATE studies SET items = '[\"labs\"]'",
        "DELETE FROM studies",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()
    with Registry(studies_home) as reg:
        assert reg.latest(sid) is not None and reg.latest(sid).decision == "reject"  # type: ignore[union-attr]


def test_parse_items_and_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_items("labs, conditions,labs") == ("labs", "conditions")
    monkeypatch.delenv(HOME_ENV, raising=False)
    with pytest.raises(Exception, match=f"pass --home DIR or set {HOME_ENV}"):
        resolve_home(None)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "h"))
    assert resolve_home(None).root == tmp_path / "h"
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="not a directory"):
        resolve_home(tmp_path / "file")


def test_study_cli_submit_decide_list_show(tmp_path: Path, studies_protocol: Path) -> None:
    home = tmp_path / "center"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "research",
            "study",
            "submit",
            "--home",
            str(home),
            "--title",
            "心房細動と抗凝固薬",
            "--applicant",
            "研究者A",
            "--purpose",
            "使用実態",
            "--protocol",
            str(studies_protocol),
            "--items",
            "demographics,prescriptions",
            "--from",
            "2023-01-01",
            "--until",
            "2025-12-31",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    sid = orjson.loads(r.stdout)["id"]
    today = date.today()
    until = date.fromordinal(add_years(today, 2).toordinal() - 1)
    r = runner.invoke(
        app,
        [
            "research",
            "study",
            "decide",
            sid,
            "--home",
            str(home),
            "--decision",
            "approve",
            "--approver",
            "委員長B",
            "--valid-until",
            until.isoformat(),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["valid_until"] == until.isoformat()
    r = runner.invoke(app, ["research", "study", "list", "--home", str(home), "--json"])
    listed = orjson.loads(r.stdout)
    assert [(s["id"], s["state"], s["releases"]) for s in listed] == [(sid, "approved", 0)]
    r = runner.invoke(app, ["research", "study", "show", sid, "--home", str(home), "--json"])
    shown = orjson.loads(r.stdout)
    assert shown["items"] == ["demographics", "prescriptions"]
    assert [d["approver"] for d in shown["decisions"]] == ["委員長B"]
    r = runner.invoke(app, ["research", "study", "show", sid, "--home", str(home)])
    assert r.exit_code == 0 and "approved" in r.stdout and "委員長B" in r.stdout
    r = runner.invoke(app, ["research", "study", "list", "--home", str(home)])
    assert sid in r.stdout

    entries = list(read_entries(home / "audit"))
    assert [e.action for e in entries] == ["study.submit", "study.decide"]
    assert entries[0].details["study"] == sid and entries[1].details["decision"] == "approve"
    assert verify_log(home / "audit").ok


def test_study_cli_refuses_a_three_year_approval_with_one_line(
    tmp_path: Path,
    studies_protocol: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hakobune.cli import main

    home = ResearchHome(tmp_path / "center").ensure()
    with Registry(home) as reg:
        sid = _submit(reg, studies_protocol)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "hakobune",
            "research",
            "study",
            "decide",
            sid,
            "--home",
            str(home.root),
            "--decision",
            "approve",
            "--approver",
            "x",
            "--valid-from",
            "2025-01-01",
            "--valid-until",
            "2027-12-31",
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hakobune: error: --valid-until: 2027-12-31 makes the approval longer than 2 years")
    assert err.count("\n") == 1
    with Registry(home) as reg:
        assert reg.decisions(sid) == []
