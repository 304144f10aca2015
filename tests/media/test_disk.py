"""Helicopter disks end to end on a real released hospital: write (one volume, and several tiny ones),
verify (every kind of damage is found and named), open (round trip equal to restore export; wrong key,
wrong passphrase and tampering are refused with nothing written), and the audit entries."""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from hakobune.audit import verify_log
from hakobune.errors import InputError
from hakobune.keys import RecipientPrivateKey, SigningKey, load_recipient_private, load_recipient_public
from media.manifest import MANIFEST_NAME, SIGNATURE_NAME, TrustAnchor, canonical, parse_manifest, sign
from media.open import DiskRejected, open_disk
from media.verify import VerifyReport, verify_disk
from media.volumes import MIN_VOLUME_SIZE, VOLUME_LABEL
from media.write import WriteOutcome, write_release
from restore.database import RestoreDB
from restore.export import BundleExporter
from restore.orders import load_order, parse_time
from tests.media.conftest import TEST_ITERATIONS, Released, viewer_available

pytestmark = pytest.mark.integration

SEGMENT = 4096  # many segments even in a small disk


@dataclass
class Disks:
    single: Path
    multi: Path
    other_single: Path
    other_multi: Path
    outcome: dict[str, WriteOutcome]
    max_volume: int
    part: int


def _write(w: Released, out: Path, **kw: object) -> WriteOutcome:
    return write_release(
        w.restore,
        order=w.order,
        out=out,
        signing_key=w.signing_key,
        audit=w.audit,
        actor="test",
        show_progress=False,
        iterations=TEST_ITERATIONS,
        workers=1,
        segment_size=SEGMENT,
        viewer=viewer_available(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def disks(released: Released, tmp_path_factory: pytest.TempPathFactory) -> Disks:
    root = tmp_path_factory.mktemp("disks")
    out = {"single": _write(released, root / "single", part_size=40_000)}
    # the multi-volume disks: volume 1 has room for the viewer, the labels and two thirds of the
    # compressed payload, in parts of an eighth of it
    m = parse_manifest((root / "single" / MANIFEST_NAME).read_bytes(), "single")
    (payload,) = m.logical_files
    own = m.payload_bytes - sum(p.size for p in payload.parts) + len(m.raw) + 200
    max_volume, part = (
        max(MIN_VOLUME_SIZE, own + payload.compressed_size * 2 // 3),
        payload.compressed_size // 8,
    )
    assert max_volume < own + payload.compressed_size, "the release is too small to need two volumes"
    for name, kw in (
        ("multi", {"max_volume": max_volume, "part_size": part}),
        ("other_single", {"part_size": 40_000}),
        ("other_multi", {"max_volume": max_volume, "part_size": part}),
    ):
        out[name] = _write(released, root / name, **kw)
    return Disks(
        root / "single", root / "multi", root / "other_single", root / "other_multi", out, max_volume, part
    )


@pytest.fixture
def anchor(released: Released) -> TrustAnchor:
    from hakobune.keys import load_verify_key

    return TrustAnchor.of_key(load_verify_key(released.center_pub))


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _problems(report: VerifyReport) -> str:
    return "\n".join(report.problems)


def _roots(disk: Path) -> list[Path]:
    subs = sorted(disk.glob("volume-*"))
    return subs or [disk]


# --- writing ----------------------------------------------------------------------------------------


def test_a_fresh_disk_verifies_and_each_volume_checks_with_sha256sum(
    disks: Disks, anchor: TrustAnchor
) -> None:
    for disk in (disks.single, disks.multi):
        report = verify_disk([disk], anchor)
        assert report.ok, report.problems
        m = report.manifest
        assert m is not None and m.patients == disks.outcome["single"].disk.patients > 0
        for root in _roots(disk):
            for listing in ("manifest-sha256.txt", "tagmanifest-sha256.txt"):
                run = subprocess.run(["sha256sum", "-c", listing], cwd=root, capture_output=True, text=True)
                assert run.returncode == 0, run.stdout + run.stderr
    # volume roots given one by one verify the same
    assert verify_disk(_roots(disks.multi), anchor).ok


def test_the_multi_volume_disk_respects_every_limit(disks: Disks, anchor: TrustAnchor) -> None:
    roots = _roots(disks.multi)
    m = len(roots)
    assert m >= 2, "the tiny --max-volume must have split the disk"
    manifest = parse_manifest((roots[0] / MANIFEST_NAME).read_bytes(), "m")
    assert manifest.volume_count == m
    for n, root in enumerate(roots, 1):
        files = [p for p in root.rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) <= disks.max_volume, f"volume {n} is over --max-volume"
        label = (root / VOLUME_LABEL).read_text(encoding="utf-8")
        assert f"volume {n} of {m}" in label and f"全{m}巻中 第{n}巻" in label
        assert (root / MANIFEST_NAME).read_bytes() == manifest.raw
        assert (root / SIGNATURE_NAME).read_bytes() == (roots[0] / SIGNATURE_NAME).read_bytes()
    (payload,) = manifest.logical_files
    assert [p.path for p in payload.parts] == sorted(p.path for p in payload.parts)
    assert all(p.size <= disks.part for p in payload.parts) and len(payload.parts) > m
    for p in payload.parts:  # every part is where the manifest says, and nowhere else
        assert (roots[p.volume - 1] / p.path).is_file()
        assert sum((r / p.path).exists() for r in roots) == 1
    if viewer_available():
        assert manifest.doc["viewer"] == "viewer.html" and (roots[0] / "viewer.html").is_file()
        assert not any((r / "viewer.html").exists() for r in roots[1:])


def test_nothing_of_a_patient_is_readable_on_the_disk(disks: Disks, released: Released) -> None:
    with RestoreDB.open(released.restore) as db:
        ids = [row.patient_id for row in db.patients()]
        names = [  # full names and addresses (a lone family name may be in the viewer's help text)
            text
            for row in db.patients()
            for text in (row.patient.family_kanji + row.patient.given_kanji, row.patient.address)
            if len(text) > 3
        ]
    blob = b"".join(p.read_bytes() for p in disks.multi.rglob("*") if p.is_file())
    for text in ids + names:
        assert text.encode() not in blob


# --- verification: every kind of damage ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_one_flipped_byte_in_any_file_is_found_and_named(
    kind: str, disks: Disks, anchor: TrustAnchor, tmp_path: Path
) -> None:
    disk = _copy(getattr(disks, kind), tmp_path)
    files = sorted(p for p in disk.rglob("*") if p.is_file())
    assert len(files) >= 10
    for path in files:
        original = path.read_bytes()
        for at in {0, len(original) // 2, len(original) - 1}:
            data = bytearray(original)
            data[at] ^= 0x01
            path.write_bytes(bytes(data))
            report = verify_disk([disk], anchor)
            where = path.relative_to(disk).as_posix()
            assert not report.ok, f"flipped byte {at} of {where} went unnoticed"
            text = _problems(report)
            rel = where.split("/", 1)[1] if kind == "multi" else where  # the path within its volume
            assert rel in text, f"{where}: the problems do not name it:\n{text}"
        path.write_bytes(original)
    assert verify_disk([disk], anchor).ok


def test_a_missing_volume_is_reported(disks: Disks, anchor: TrustAnchor, tmp_path: Path) -> None:
    disk = _copy(disks.multi, tmp_path)
    m = len(_roots(disk))
    shutil.rmtree(disk / "volume-2")
    report = verify_disk([disk], anchor)
    assert not report.ok and f"volume 2 of {m} is missing" in report.problems
    # the same when the volumes are given one by one
    report = verify_disk([r for r in _roots(disk)], anchor)
    assert f"volume 2 of {m} is missing" in report.problems


def test_a_file_swapped_in_from_another_disk_is_reported(
    disks: Disks, anchor: TrustAnchor, tmp_path: Path
) -> None:
    disk = _copy(disks.single, tmp_path)
    part = "data/bundles.ndjson.hkm.000"
    shutil.copyfile(disks.other_single / part, disk / part)
    report = verify_disk([disk], anchor)
    assert not report.ok
    assert any(part in p and "altered" in p for p in report.problems), report.problems


def test_a_whole_volume_of_another_disk_is_reported(
    disks: Disks, anchor: TrustAnchor, tmp_path: Path
) -> None:
    disk = _copy(disks.multi, tmp_path)
    m = len(_roots(disk))
    shutil.rmtree(disk / "volume-2")
    shutil.copytree(disks.other_multi / "volume-2", disk / "volume-2")
    report = verify_disk([disk], anchor)
    text = _problems(report)
    assert "volume-2: manifest.json differs" in text
    assert f"volume 2 of {m} is missing" in report.problems


def test_extra_and_missing_files_are_named(disks: Disks, anchor: TrustAnchor, tmp_path: Path) -> None:
    disk = _copy(disks.single, tmp_path)
    (disk / "data" / "notes.txt").write_text("left here")
    (disk / "autorun.inf").write_text("x")
    (disk / "README.txt").unlink()
    report = verify_disk([disk], anchor)
    text = _problems(report)
    assert "data/notes.txt: extra file" in text and "autorun.inf: extra file" in text
    assert "README.txt: missing" in text


def test_what_an_operating_system_leaves_on_a_disk_is_noted_not_failed(
    disks: Disks, anchor: TrustAnchor, tmp_path: Path
) -> None:
    disk = _copy(disks.single, tmp_path)
    (disk / "System Volume Information").mkdir()
    (disk / "System Volume Information" / "IndexerVolumeGuid").write_text("{guid}")
    (disk / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    report = verify_disk([disk], anchor)
    assert report.ok, report.problems
    assert any("System Volume Information" in n for n in report.notes)
    # … but not inside the payload folder
    (disk / "data" / ".DS_Store").write_bytes(b"x")
    assert not verify_disk([disk], anchor).ok


def _forge(root: Path, key: SigningKey, change: dict[str, object], *, claim_signer: bool) -> None:
    doc = orjson.loads((root / MANIFEST_NAME).read_bytes())
    doc.update(change)
    if claim_signer:
        doc["signer"] = {
            "key_fingerprint": key.public.fingerprint,
            "public_key": base64.b64encode(key.public.raw).decode(),
        }
    data = canonical(doc)
    (root / MANIFEST_NAME).write_bytes(data)
    (root / SIGNATURE_NAME).write_bytes(sign(data, key))


def test_a_manifest_signed_by_the_wrong_key_fails(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    intruder = SigningKey.generate()
    # a manifest that names its own (intruder) signer and is validly signed by it
    disk = _copy(disks.single, tmp_path / "a")
    _forge(disk, intruder, {}, claim_signer=True)
    report = verify_disk([disk], anchor)
    assert not report.ok and "not by the trusted center key" in _problems(report)
    # an intruder's signature over the genuine manifest
    disk = _copy(disks.single, tmp_path / "b")
    _forge(disk, intruder, {}, claim_signer=False)
    assert not verify_disk([disk], anchor).ok
    # the genuine disk checked against another anchor (key or fingerprint) fails; by fingerprint it passes
    assert not verify_disk([disks.single], TrustAnchor.of_key(intruder.public)).ok
    assert not verify_disk([disks.single], TrustAnchor.of_fingerprint(intruder.public.fingerprint)).ok
    assert verify_disk([disks.single], TrustAnchor.of_fingerprint(anchor.fingerprint)).ok


def test_manifests_that_differ_between_volumes_fail(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    disk = _copy(disks.multi, tmp_path)
    # validly signed by the real center key, but not the manifest the other volumes carry
    _forge(
        disk / "volume-2", released.signing_key, {"created_at": "2031-01-01T00:00:00Z"}, claim_signer=False
    )
    report = verify_disk([disk], anchor)
    assert not report.ok
    assert "volume-2: manifest.json differs" in _problems(report)


def test_a_folder_that_is_no_disk_is_an_input_error(anchor: TrustAnchor, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no Hakobune disk here"):
        verify_disk([tmp_path], anchor)


# --- opening ---------------------------------------------------------------------------------------


def _reference_export(released: Released, created_at: str, tmp_path: Path) -> Path:
    """What 'restore export' writes for the same restore folder at the same moment."""
    with RestoreDB.open(released.restore) as db:
        hospital = str(db.meta()["hospital"])
        with BundleExporter(
            hospital=hospital,
            folder=tmp_path / "ref" / "fhir",
            ndjson=tmp_path / "ref" / "bundles.ndjson",
            generated_at=parse_time(created_at),
            workers=1,
        ) as exporter:
            for row in db.patients():
                exporter.write(row)
    return tmp_path / "ref"


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_open_round_trips_to_what_restore_export_writes(
    kind: str, disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    outcome = disks.outcome[kind]
    typed = outcome.passphrase.lower().replace("-", " ")
    result = open_disk(
        [getattr(disks, kind)],
        anchor,
        tmp_path / "opened",
        key=None,
        passphrase=typed,
        audit=released.audit,
        actor="test",
    )
    manifest = parse_manifest((_roots(getattr(disks, kind))[0] / MANIFEST_NAME).read_bytes(), "m")
    ref = _reference_export(released, manifest.created_at, tmp_path)
    got = tmp_path / "opened"
    assert (got / "bundles.ndjson").read_bytes() == (ref / "bundles.ndjson").read_bytes()
    names = sorted(p.name for p in (ref / "fhir").iterdir())
    assert sorted(p.name for p in (got / "fhir").iterdir()) == names
    for name in names:
        assert (got / "fhir" / name).read_bytes() == (ref / "fhir" / name).read_bytes()
    assert result.patients == len(names) and result.unnamed == 0


def test_open_with_the_recipient_key(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    key = load_recipient_private(released.recipient)
    result = open_disk(
        [disks.multi], anchor, tmp_path / "o", key=key, passphrase=None, audit=released.audit, actor="test"
    )
    assert result.patients > 0 and len(list((tmp_path / "o" / "fhir").iterdir())) == result.patients


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")], "a temporary folder was left"


def test_a_wrong_passphrase_or_key_fails_cleanly_and_writes_nothing(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="wrong passphrase") as e:
        open_disk(
            [disks.single],
            anchor,
            tmp_path / "o",
            key=None,
            passphrase="AAAA-BBBB",
            audit=released.audit,
            actor="t",
        )
    assert "\n" not in str(e.value)
    _nothing_written(tmp_path)
    other = RecipientPrivateKey.generate()
    with pytest.raises(InputError, match="was written for recipient key") as e:
        open_disk(
            [disks.single],
            anchor,
            tmp_path / "o",
            key=other,
            passphrase=None,
            audit=released.audit,
            actor="t",
        )
    assert "\n" not in str(e.value)
    _nothing_written(tmp_path)
    # another suite altogether
    p256 = RecipientPrivateKey.generate("cryptrec-p256")
    with pytest.raises(InputError):
        open_disk(
            [disks.single], anchor, tmp_path / "o", key=p256, passphrase=None, audit=released.audit, actor="t"
        )
    _nothing_written(tmp_path)


def test_a_tampered_part_is_refused_and_nothing_written(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    disk = _copy(disks.multi, tmp_path / "copy")
    part = next(disk.rglob("bundles.ndjson.hkm.001"))
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(DiskRejected, match="does not verify") as e:
        open_disk(
            [disk],
            anchor,
            tmp_path / "o",
            key=None,
            passphrase=disks.outcome["multi"].passphrase,
            audit=released.audit,
            actor="t",
        )
    assert any("hkm.001: altered" in p for p in e.value.report.problems)
    _nothing_written(tmp_path)


def test_open_refuses_a_non_empty_output_folder(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        open_disk(
            [disks.single], anchor, tmp_path / "o", key=None, passphrase="x", audit=released.audit, actor="t"
        )
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


# --- write refusals -----------------------------------------------------------------------------------


def test_write_refuses_an_order_the_restore_was_not_unlocked_with(released: Released, tmp_path: Path) -> None:
    other = released.new_order(recipient=released.recipient_pub)
    with pytest.raises(InputError, match="unlocked with release order"):
        write_release(
            released.restore,
            order=other,
            out=tmp_path / "d",
            signing_key=released.signing_key,
            audit=released.audit,
            actor="t",
            show_progress=False,
            viewer=False,
        )
    assert not (tmp_path / "d").exists()


def test_write_refuses_an_expired_order_a_foreign_recipient_key_and_a_used_folder(
    released: Released, tmp_path: Path
) -> None:
    order = load_order(released.order).order
    write = functools.partial(
        write_release,
        released.restore,
        order=released.order,
        signing_key=released.signing_key,
        audit=released.audit,
        actor="t",
        show_progress=False,
        viewer=False,
    )
    with pytest.raises(InputError, match="expired"):
        write(out=tmp_path / "d", now=order.expires_at + timedelta(seconds=1))
    with pytest.raises(InputError, match="names recipient key"):
        write(out=tmp_path / "d", recipient_key=RecipientPrivateKey.generate().public)
    assert not (tmp_path / "d").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        write(out=tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["x"]


def test_write_with_policy_checks_the_approvals(released: Released, tmp_path: Path) -> None:
    # the same order (same body, same SHA-256) with its approvals stripped
    doc = orjson.loads(released.order.read_bytes())
    doc["approvals"] = []
    stripped = tmp_path / "unapproved.json"
    stripped.write_bytes(orjson.dumps(doc))
    with pytest.raises(InputError, match="not approved"):
        write_release(
            released.restore,
            order=stripped,
            out=tmp_path / "d",
            signing_key=released.signing_key,
            audit=released.audit,
            actor="t",
            policy=released.policy,
            show_progress=False,
            viewer=False,
        )
    assert not (tmp_path / "d").exists()
    # written straight onto a fresh disk that Windows has already touched
    (tmp_path / "ok" / "System Volume Information").mkdir(parents=True)
    done = _write(
        released,
        tmp_path / "ok",
        policy=released.policy,
        recipient_key=load_recipient_public(released.recipient_pub),
    )
    assert done.disk.patients > 0
    report = verify_disk([tmp_path / "ok"], TrustAnchor.of_key(released.signing_key.public))
    assert report.ok and report.notes


@pytest.mark.skipif(not viewer_available(), reason="the offline viewer is not installed")
def test_a_volume_too_small_for_the_viewer_is_refused_and_cleaned_up(
    released: Released, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="too small"):
        _write(released, tmp_path / "d", max_volume=65_536, part_size=4_096)
    assert not (tmp_path / "d").exists()


# --- audit ---------------------------------------------------------------------------------------------


def test_every_write_and_open_is_in_the_audit_log_without_patient_data(
    disks: Disks, anchor: TrustAnchor, released: Released, tmp_path: Path
) -> None:
    open_disk(
        [disks.single],
        anchor,
        tmp_path / "o",
        key=None,
        passphrase=disks.outcome["single"].passphrase,
        audit=released.audit,
        actor="auditor",
    )
    with pytest.raises(InputError):
        open_disk(
            [disks.single],
            anchor,
            tmp_path / "o2",
            key=None,
            passphrase="WRONG",
            audit=released.audit,
            actor="auditor",
        )
    with pytest.raises(InputError):  # a refused write is recorded too
        write_release(
            released.restore,
            order=released.new_order(),
            out=tmp_path / "d",
            signing_key=released.signing_key,
            audit=released.audit,
            actor="auditor",
            show_progress=False,
            viewer=False,
        )
    entries = [orjson.loads(line) for line in (released.audit / "audit.log").read_bytes().splitlines()]
    writes = [e for e in entries if e["action"] == "media.write" and e["details"].get("ok")]
    disk_ids = {e["details"]["disk_id"] for e in writes}
    assert {o.disk.disk_id for o in disks.outcome.values()} <= disk_ids
    w = next(e for e in writes if e["details"]["disk_id"] == disks.outcome["multi"].disk.disk_id)
    assert w["details"]["volumes"] == len(_roots(disks.multi)) and w["details"]["patients"] > 0
    opens = [e for e in entries if e["action"] == "media.open" and e["actor"] == "auditor"]
    assert [e["details"]["ok"] for e in opens] == [True, False]
    assert opens[0]["details"]["disk_id"] == disks.outcome["single"].disk.disk_id
    assert any(
        e["action"] == "media.write" and e["actor"] == "auditor" and not e["details"]["ok"] for e in entries
    )
    with RestoreDB.open(released.restore) as db:
        ids = [row.patient_id for row in db.patients()]
    log = (released.audit / "audit.log").read_text(encoding="utf-8")
    assert not [pid for pid in ids if pid in log]
    report = verify_log(released.audit)
    assert report.ok, report.problems


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.rglob("*.tmp")), "temporary files were left behind"
