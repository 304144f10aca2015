"""The drill runs every stage, reports figures and quarantine, continues its world, and fails loudly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hakobune.cli import app
from hakobune.drill import DrillConfig, DrillWorld, run_drill
from hakobune.errors import HakobuneError

runner = CliRunner()


def _report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return data


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


@pytest.mark.integration
def test_synthetic_drill_runs_every_stage_and_continues_incrementally(tmp_path: Path) -> None:
    out = tmp_path / "world"
    args = ["drill", "--out", str(out), "--patients", "60", "--days", "5", "--workers", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rep = _report(out)
    assert rep["ok"] is True
    assert [s["status"] for s in rep["stages"]] == ["ok"] * len(rep["stages"])
    hospital = _stage(rep, "hospital")["figures"]
    assert hospital["action"] == "generated" and hospital["patients"] == 60
    read = _stage(rep, "read")["figures"]
    assert read["files"] == hospital["files"] and read["patients"] == 60
    assert read["quarantined"] == 0 and rep["quarantine"] == []
    assert read["records"]["patient"] == 60
    names = [s["name"] for s in rep["stages"]]
    for stage in ("ceremony", "release", "unlock", "search", "export", "disk", "research", "audit"):
        assert stage in names
    assert names.index("ceremony") < names.index("setup") < names.index("sync") < names.index("unlock")
    unlock = _stage(rep, "unlock")["figures"]
    fhir = sorted(p.stem for p in (out / "fhir").glob("*.json"))
    assert unlock["patients"] == unlock["bundles"] == len(fhir) > 0
    assert len(fhir) == 60 - _stage(rep, "consent")["figures"]["opted_out_all"]
    recovery = rep["recovery"]
    assert 0 < recovery["rto_first_bundle_seconds"] <= recovery["rto_last_bundle_seconds"]
    assert recovery["rpo_hours"] >= 0
    assert _stage(rep, "search")["figures"]["top5"] >= 0.95
    assert _stage(rep, "export")["figures"]["nonconformant"] == 0
    assert _stage(rep, "audit")["figures"]["ok"] is True
    assert not list(out.rglob("release.key")), "the release private key is never written"
    disk = _stage(rep, "disk")["figures"]
    assert disk["patients"] == disk["opened_bundles"] == len(fhir)
    assert (out / "disk" / "viewer.html").is_file() and (out / "disk" / "manifest.json").is_file()
    assert len(disk["passphrase"].replace("-", "")) == 24
    verified = runner.invoke(
        app, ["media", "verify", str(out / "disk"), "--center-key", str(out / "center/keys/center.pub")]
    )
    assert verified.exit_code == 0, verified.output
    sealed = _stage(rep, "sync")["figures"]["research"]
    assert sealed["status"] == "sealed" and sealed["changeset"].startswith("research-")
    assert 0 < sealed["patients"] <= _stage(rep, "sync")["figures"]["patients"]
    research = _stage(rep, "research")["figures"]
    assert research["changesets"] == 1 and research["rows"]["patients"] > 0
    released = out / research["released"]
    assert released.parent.parent == out / "research" / "released"
    assert {"table.csv", "table.html", "note.md"} <= {p.name for p in released.iterdir()}

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    rep2 = _report(out)
    h2 = _stage(rep2, "hospital")["figures"]
    assert h2["action"] == "advanced one day" and h2["days_done"] == 6
    assert _stage(rep2, "read")["figures"]["files"] == h2["files"]
    consent = _stage(rep2, "consent")["figures"]
    assert consent["added"] == 0 and consent["unchanged"] == consent["rows"]
    assert _stage(rep2, "ceremony")["figures"]["new"] is False
    assert _stage(rep2, "unlock")["figures"]["sequence"] == _stage(rep, "unlock")["figures"]["sequence"] + 1
    research2 = _stage(rep2, "research")["figures"]
    assert research2["changesets"] == 1 and research2["study"] != research["study"]


def test_drill_on_the_real_samples_lists_the_quarantined_files(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "world"
    result = runner.invoke(app, ["drill", "--ssmix2", str(samples), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rep = _report(out)
    assert rep["ok"] is True
    names = sorted(q["file"] for q in rep["quarantine"])
    assert names == [
        "0000001_20000401_OMP-11_123456789012345_20110701113813225_01_1",
        "0000001_20000401_OMP-11_123456789012346_20110701113813226_01_0",
        "9999013_20110630_OMP-11_123456789012345_20110701113813225_01_1",
    ]
    assert all(q["reason"] for q in rep["quarantine"])
    read = _stage(rep, "read")["figures"]
    assert (read["read"], read["skipped"], read["quarantined"]) == (8, 11, 3)
    bundles = sorted(p.name for p in (out / "fhir").glob("*.json"))
    assert bundles and all(p.endswith(".json") for p in bundles)


def test_a_failing_stage_fails_the_drill_and_skips_the_rest(tmp_path: Path) -> None:
    def boom(world: DrillWorld) -> dict[str, Any]:
        raise HakobuneError("stage exploded on purpose")

    def never(world: DrillWorld) -> dict[str, Any]:
        raise AssertionError("must not run after a failure")

    rep = run_drill(DrillConfig(out=tmp_path / "w"), stages=[("one", boom), ("two", never)])
    assert rep["ok"] is False
    assert [s["status"] for s in rep["stages"]] == ["failed", "skipped"]
    assert "stage exploded on purpose" in rep["stages"][0]["error"]
    assert _report(tmp_path / "w")["ok"] is False


def test_drill_exits_nonzero_when_the_tree_is_missing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["drill", "--ssmix2", str(tmp_path / "nope"), "--out", str(tmp_path / "w")])
    assert result.exit_code == 1
    rep = _report(tmp_path / "w")
    assert rep["ok"] is False and "not a directory" in rep["stages"][0]["error"]


def test_drill_refuses_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(HakobuneError, match="not a drill folder"):
        run_drill(DrillConfig(out=tmp_path))
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "report.json").exists()
