"""The drill's helicopter-disk stage: write the released patients to an encrypted disk in ``OUT/disk``,
verify it as the crew would before take-off (against the center's public key only), and open it as the
receiving hospital would (with its private key) to check that every bundle comes back.

A drill keeps the disk's passphrase in ``report.json`` (DESIGN §11); a real one shows it once and it
travels by another channel.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hakobune.errors import HakobuneError

if TYPE_CHECKING:
    from hakobune.drill import DrillWorld

DISK_DIR = "disk"


def stage_disk(world: DrillWorld) -> dict[str, Any]:
    from center.keys import load_center_public_key, load_center_signing_key
    from center.layout import CenterLayout
    from hakobune.drill_release import (
        ACTOR,
        RECIPIENT_KEY,
        RESTORE_DIR,
        _as_of,
        audit_dir,
        ceremony_dir,
    )
    from hakobune.keys import load_recipient_private
    from media.manifest import TrustAnchor
    from media.open import open_disk
    from media.verify import verify_disk
    from media.write import write_release

    out = world.config.out
    disk = out / DISK_DIR
    shutil.rmtree(disk, ignore_errors=True)  # a drill run writes a fresh disk of its release
    layout = CenterLayout(world.center_home)
    written = write_release(
        out / RESTORE_DIR,
        order=world.facts["order"],
        out=disk,
        signing_key=load_center_signing_key(layout),
        audit=audit_dir(world),
        actor=ACTOR,
        policy=ceremony_dir(world) / "custody.json",
        as_of=_as_of(world),
        workers=world.config.workers,
        show_progress=False,
    )
    anchor = TrustAnchor.of_key(load_center_public_key(layout))
    report = verify_disk([disk], anchor)
    if not report.ok:
        raise HakobuneError(f"{disk}: the disk does not verify: {'; '.join(report.problems[:3])}")
    with tempfile.TemporaryDirectory(prefix="hakobune-drill-open-") as tmp:
        opened = open_disk(
            [disk],
            anchor,
            Path(tmp) / "opened",
            key=load_recipient_private(out / "keys" / RECIPIENT_KEY),
            passphrase=None,
            audit=audit_dir(world),
            actor=ACTOR,
        )
    d = written.disk
    if opened.patients != d.patients:
        raise HakobuneError(f"{disk}: wrote {d.patients} bundles but opened {opened.patients}")
    return {
        "disk_id": d.disk_id,
        "patients": d.patients,
        "volumes": len(d.roots),
        "files": d.files,
        "disk_bytes": d.disk_bytes,
        "viewer": "disk/viewer.html" if d.viewer else None,
        "write_seconds": round(d.seconds, 2),
        "verified_files": report.files,
        "opened_bundles": opened.patients,
        # a drill's disk: the passphrase is kept here (a real one is shown once, sent separately)
        "passphrase": written.passphrase,
    }
