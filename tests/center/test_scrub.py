"""``center verify``: scrub the store against the catalog and heal from the mirror, on real changesets."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from center.catalog import Catalog, changesets_table
from center.config import CenterConfig, load_center_config
from center.scrub import ScrubReport, heal_source, scrub
from hakobune.cli import app
from hakobune.errors import ConfigError
from hakobune.naming import changeset_name
from hakobune.sealed import ENTRY_SIZE, KID_SIZE, SHREDDED, TOKEN_SIZE, read_header
from tests.center.test_replicate import flip_byte, make_world
from tests.center.test_replicate import template as template
from tests.pipeline import HOSPITAL

pytestmark = pytest.mark.integration


@dataclass
class Centers:
    """A primary center holding three changesets of one hospital, and its mirror holding them too."""

    primary: CenterConfig
    mirror: CenterConfig

    def primary_blob(self, sequence: int) -> Path:
        return self.primary.layout.stored(HOSPITAL, "clinical", sequence)

    def mirror_blob(self, sequence: int) -> Path:
        return self.mirror.layout.stored(HOSPITAL, "clinical", sequence)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """Built once: the hospital synced three days, the primary replicated to the mirror."""
    root = tmp_path_factory.mktemp("scrub-world")
    w = make_world(root, template)
    w.day()
    w.day()
    assert w.replicate().ok
    return root


@pytest.fixture
def world(pristine: Path, tmp_path: Path) -> Centers:
    """A fresh copy of both centers (catalog paths are relative to each home, so a copy is a center)."""
    for name in ("center", "mirror"):
        shutil.copytree(pristine / name, tmp_path / name, symlinks=True)
    return Centers(load_center_config(tmp_path / "center"), load_center_config(tmp_path / "mirror"))


def run(world: Centers, *, heal: bool = False) -> ScrubReport:
    with Catalog.open(world.primary.catalog_url) as c:
        source = heal_source(world.mirror.layout.home, world.primary.layout) if heal else None
        return scrub(world.primary, c, heal_from=source)


def cli(world: Centers, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        app,
        ["center", "verify", "--json", *args],
        env={"HAKOBUNE_CENTER_HOME": str(world.primary.layout.home)},
    )
    assert result.exception is None or result.exit_code == 1, result.output
    return result.exit_code, orjson.loads(result.stdout)


def rel(world: Centers, path: Path) -> str:
    return str(path.relative_to(world.primary.layout.home))


def damage(world: Centers) -> dict[str, str]:
    """A flipped byte, a truncated file, a deleted file and a stray: {path relative to home: kind}."""
    flip_byte(world.primary_blob(1))
    b2 = world.primary_blob(2)
    b2.write_bytes(b2.read_bytes()[: b2.stat().st_size // 2])
    world.primary_blob(3).unlink()
    stray = world.primary_blob(1).with_name("notes.txt")
    stray.write_text("left here by someone\n")
    return {
        rel(world, world.primary_blob(1)): "altered",
        rel(world, b2): "truncated",
        rel(world, world.primary_blob(3)): "missing",
        rel(world, stray): "unexpected",
    }


def test_a_sound_store_verifies_clean_and_status_shows_it(world: Centers) -> None:
    code, doc = cli(world)
    assert code == 0 and doc["ok"] is True
    assert doc["blobs"] == 3 and doc["problems"] == 0
    with Catalog.open(world.primary.catalog_url) as c:
        [row] = [r for r in c.status() if r.hospital == HOSPITAL]
        assert row.scrub_problems == 0 and row.scrub_at is not None
        assert c.scrubs()[HOSPITAL].blobs == 3


def test_every_kind_of_damage_is_reported_with_the_file_and_the_reason(world: Centers) -> None:
    expected = damage(world)

    code, doc = cli(world)

    assert code == 1 and doc["ok"] is False
    [h] = doc["hospitals"]
    found = {p["path"]: p for p in h["problems"]}
    assert {path: p["kind"] for path, p in found.items()} == expected
    reasons = {p["kind"]: p["reason"] for p in found.values()}
    assert "payload does not match" in reasons["altered"]
    assert "of" in reasons["truncated"] and "bytes" in reasons["truncated"]
    assert reasons["missing"] == "listed in the catalog, not in the store"
    assert reasons["unexpected"] == "not in the catalog"
    assert not any(p["healed"] for p in found.values())
    # nothing was touched without --heal-from
    assert not world.primary.layout.quarantine(HOSPITAL).exists()
    assert not world.primary_blob(3).exists()
    with Catalog.open(world.primary.catalog_url) as c:
        scrubbed = c.scrubs()[HOSPITAL]
        [row] = [r for r in c.status() if r.hospital == HOSPITAL]
    assert (scrubbed.problems, scrubbed.healed, row.scrub_problems) == (4, 0, 4)
    assert scrubbed.summary is not None and scrubbed.summary.startswith(rel(world, world.primary_blob(1)))


def test_heal_from_the_mirror_repairs_everything_and_a_second_verify_is_clean(world: Centers) -> None:
    damage(world)
    bad1 = world.primary_blob(1).read_bytes()

    code, doc = cli(world, "--heal-from", str(world.mirror.layout.home))

    assert code == 0 and doc["ok"] is True, doc
    assert doc["problems"] == 4 and doc["healed"] == 4
    for seq in (1, 2, 3):
        assert world.primary_blob(seq).read_bytes() == world.mirror_blob(seq).read_bytes()
    # the bad copies and the stray are kept aside, each with its reason
    quarantine = world.primary.layout.quarantine(HOSPITAL)
    kept = sorted(p for p in quarantine.iterdir() if not p.name.endswith(".reason"))
    assert len(kept) == 3  # altered, truncated, stray (the missing one had nothing to keep)
    assert any(p.read_bytes() == bad1 for p in kept)
    for p in kept:
        reason = (quarantine / f"{p.name}.reason").read_text()
        assert reason.split(": ")[1] in ("altered", "truncated", "unexpected")
    assert not world.primary_blob(1).with_name("notes.txt").exists()

    again = run(world)
    assert again.ok and not again.problems
    with Catalog.open(world.primary.catalog_url) as c:
        assert c.scrubs()[HOSPITAL].problems == 0


def test_a_blob_bad_on_both_sides_is_reported_not_healed(world: Centers) -> None:
    flip_byte(world.primary_blob(2))
    flip_byte(world.mirror_blob(2), offset_from_end=40)
    before = world.primary_blob(2).read_bytes()

    report = run(world, heal=True)

    assert not report.ok
    [problem] = report.left
    assert problem.path == rel(world, world.primary_blob(2)) and problem.kind == "altered"
    assert problem.note is not None and "the mirror's copy is bad too" in problem.note
    assert world.primary_blob(2).read_bytes() == before  # left as it was, not swapped for another bad copy
    assert not world.primary.layout.quarantine(HOSPITAL).exists()
    code, _ = cli(world, "--heal-from", str(world.mirror.layout.home))
    assert code == 1


def test_a_blob_the_mirror_does_not_have_is_not_healed(world: Centers) -> None:
    world.mirror_blob(2).unlink()  # as if replication had not reached it yet
    flip_byte(world.primary_blob(2))
    report = run(world, heal=True)
    [problem] = report.left
    assert problem.note is not None and "the mirror has no" in problem.note


def test_a_validly_signed_changeset_that_is_not_the_one_catalogued_is_altered(world: Centers) -> None:
    with Catalog.open(world.primary.catalog_url) as c, c.engine.begin() as conn:
        conn.execute(
            update(changesets_table).where(changesets_table.c.sequence == 2).values(header_hash="ab" * 32)
        )
    report = run(world)
    [problem] = report.left
    assert problem.kind == "altered" and "differs from the catalog's abababababab" in problem.reason


def test_healing_does_not_bring_back_a_patient_erased_later(world: Centers) -> None:
    # the mirror's copy of changeset 1 still holds a key the primary shredded after an erasure that
    # changeset 3 carried; healing changeset 1 must shred it again
    blob = world.primary_blob(1)
    sealed = read_header(blob)
    entry_offset = sealed.header.keys_offset
    token = blob.read_bytes()[entry_offset : entry_offset + TOKEN_SIZE]
    with Catalog.open(world.primary.catalog_url) as c:
        c.add_tombstones(HOSPITAL, "clinical", 3, [token.hex()])
    blob.unlink()

    report = run(world, heal=True)

    assert report.ok, [p.line() for p in report.problems]
    healed = world.primary_blob(1).read_bytes()
    wrapped = entry_offset + TOKEN_SIZE + KID_SIZE + 32
    assert healed[wrapped : entry_offset + ENTRY_SIZE] == SHREDDED
    assert world.mirror_blob(1).read_bytes()[wrapped : entry_offset + ENTRY_SIZE] != SHREDDED
    assert run(world).ok  # a shredded copy still verifies


def test_strays_outside_the_hospitals_partitions_are_reported_and_left(world: Centers) -> None:
    stray = world.primary.layout.store_root / "UNKNOWN"
    stray.mkdir()
    (world.primary.layout.store(HOSPITAL, "clinical") / "sub").mkdir()
    report = run(world, heal=True)
    assert not report.ok
    assert {p.path for p in report.left} == {
        "store/UNKNOWN",
        f"store/{HOSPITAL}/clinical/sub",
    }
    assert stray.is_dir()


def test_a_file_ingest_is_still_writing_is_not_a_stray(world: Centers) -> None:
    tmp = world.primary_blob(1).with_name(changeset_name("clinical", 9) + ".tmp")
    tmp.write_bytes(b"partial")
    assert run(world).ok


def test_heal_from_must_be_another_center(world: Centers, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a center home"):
        heal_source(tmp_path / "empty", world.primary.layout)
    with pytest.raises(ConfigError, match="is this center itself"):
        heal_source(world.primary.layout.home, world.primary.layout)
