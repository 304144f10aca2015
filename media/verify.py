"""``media verify``: is this disk complete, unaltered and signed by the center we trust?

Given the volume folders (or the folder holding ``volume-N`` folders), :func:`verify_disk` reads every
volume's ``manifest.json`` and ``manifest.sig``, checks the signature against the trust anchor (the
center's key or its fingerprint), requires the manifests of all volumes to be the same bytes, tells each
folder's volume number by the hash of its ``VOLUME.txt`` (else by its folder name), and then, streaming,
checks every file of every volume against the manifest: missing, extra, altered (size or SHA-256).  It
reports every problem, not just the first; a disk passes only with none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakobune.errors import InputError
from media.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    TrustAnchor,
    parse_manifest,
    signature_problem,
)
from media.volumes import OS_METADATA, VOLUME_LABEL, file_sha256, volume_dir_number

ProgressFn = Callable[[int, int], None]


@dataclass
class VerifyReport:
    """The outcome: ``problems`` (empty when the disk passes), which folder is which volume, figures."""

    roots: dict[int, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    files: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.manifest is not None

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "disk_id": m.disk_id if m else None,
            "order": m.order_id if m else None,
            "hospital": m.hospital if m else None,
            "patients": m.patients if m else None,
            "volumes": m.volume_count if m else None,
            "volume_roots": {str(n): str(p) for n, p in sorted(self.roots.items())},
            "files": self.files,
            "bytes": self.bytes,
        }


def volume_roots(dirs: Iterable[Path]) -> list[Path]:
    """The volume roots among ``dirs``: a folder with a manifest (or a volume label) is one; otherwise its
    ``volume-N`` sub-folders are.  :class:`InputError` for a folder that is neither."""
    roots: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise InputError(str(d), "not a folder")
        if (d / MANIFEST_NAME).exists() or (d / VOLUME_LABEL).exists():
            roots.append(d)
            continue
        subs = sorted(
            (p for p in d.iterdir() if p.is_dir() and volume_dir_number(p) is not None),
            key=lambda p: volume_dir_number(p) or 0,
        )
        if not subs:
            raise InputError(str(d), "no Hakobune disk here (no manifest.json and no volume-N folders)")
        roots.extend(subs)
    out: list[Path] = []
    for r in roots:
        if r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(str(path), f"cannot read ({e.strerror})") from None


def _trusted_manifest(roots: list[Path], anchor: TrustAnchor, report: VerifyReport) -> dict[Path, bytes]:
    """Find the manifest whose signature the anchor accepts; report every volume whose manifest or
    signature is missing, unreadable, untrusted or different from it.  The raw manifest of each root."""
    raw: dict[Path, bytes] = {}
    sigs: dict[Path, bytes | None] = {}
    trusted: tuple[Path, Manifest] | None = None
    checked: set[tuple[bytes, bytes | None]] = set()
    for root in roots:
        data = _read(root / MANIFEST_NAME)
        sig = _read(root / SIGNATURE_NAME)
        if data is None:
            report.problems.append(f"{root}: {MANIFEST_NAME} missing")
            continue
        raw[root], sigs[root] = data, sig
        if trusted is not None or (data, sig) in checked:
            continue
        checked.add((data, sig))
        try:
            manifest = parse_manifest(data, str(root / MANIFEST_NAME))
        except InputError as e:
            report.problems.append(str(e))
            continue
        if sig is None:
            report.problems.append(f"{root}: {SIGNATURE_NAME} missing")
            continue
        problem = signature_problem(data, sig, manifest.signer_key, anchor)
        if problem is not None:
            report.problems.append(f"{root}: {problem}")
            continue
        trusted = (root, manifest)
    if trusted is None:
        report.problems.append("no volume has a manifest signed by the trusted center key: nothing verified")
        return raw
    first, manifest = trusted
    report.manifest = manifest
    for root, data in raw.items():
        if data != manifest.raw:
            report.problems.append(
                f"{root}: {MANIFEST_NAME} differs from the one on {first} (another disk's volume, or altered)"
            )
        elif sigs[root] != sigs[first]:
            what = "missing" if sigs[root] is None else f"differs from the one on {first} (altered)"
            if f"{root}: {SIGNATURE_NAME} missing" not in report.problems:
                report.problems.append(f"{root}: {SIGNATURE_NAME} {what}")
    return raw


def _volume_number(root: Path, manifest: Manifest, label_hashes: dict[str, int]) -> int | None:
    """Which volume ``root`` is: by the hash of its ``VOLUME.txt``, else by its folder name."""
    label = root / VOLUME_LABEL
    if label.is_file() and label.stat().st_size < 1 << 16:
        _, sha = file_sha256(label)
        if sha in label_hashes:
            return label_hashes[sha]
    n = volume_dir_number(root)
    if n is not None and n <= manifest.volume_count:
        return n
    return 1 if manifest.volume_count == 1 else None


def _files_on(root: Path, notes: list[str]) -> dict[str, Path]:
    """Every file below ``root`` (relative POSIX path → path), the manifest and its signature excepted,
    and what the operating system keeps at the root of any disk (noted in ``notes``, not checked)."""
    out: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == root:
            for name in sorted(n for n in (*dirs, *files) if n in OS_METADATA):
                notes.append(f"{root}: {name}: left by the operating system, ignored")
            dirs[:] = [d for d in dirs if d not in OS_METADATA]
            files = [f for f in files if f not in OS_METADATA]
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if (here / d).is_symlink()]:
            p = here / name
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME):
                out[rel] = p
    return out


def verify_disk(
    dirs: Iterable[Path], anchor: TrustAnchor, *, on_progress: ProgressFn | None = None
) -> VerifyReport:
    """Check the disk in ``dirs`` completely; the report lists every problem found."""
    report = VerifyReport()
    roots = volume_roots(dirs)
    raw = _trusted_manifest(roots, anchor, report)
    manifest = report.manifest
    if manifest is None:
        return report
    m = manifest.volume_count
    label_hashes = {
        f.sha256: n for n in range(1, m + 1) for f in manifest.volume_files(n) if f.path == VOLUME_LABEL
    }
    for root in roots:
        data = raw.get(root)
        if data is not None and data != manifest.raw:
            try:
                other = parse_manifest(data, str(root / MANIFEST_NAME))
            except InputError:
                other = None
            if other is not None and other.disk_id != manifest.disk_id:
                continue  # a volume of another disk: reported above, its files are not this disk's
        n = _volume_number(root, manifest, label_hashes)
        if n is None:
            report.problems.append(
                f"{root}: cannot tell which volume of {m} this is ({VOLUME_LABEL} altered)"
            )
            continue
        if n in report.roots:
            report.problems.append(f"{root}: volume {n} of {m} given twice (also {report.roots[n]})")
            continue
        report.roots[n] = root
    for n in range(1, m + 1):
        if n not in report.roots:
            report.problems.append(f"volume {n} of {m} is missing")
    total = sum(f.size for n in report.roots for f in manifest.volume_files(n))
    done = 0
    buf = bytearray(4 << 20)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total)

    for n, root in sorted(report.roots.items()):
        expected = {f.path: f for f in manifest.volume_files(n)}
        present = _files_on(root, report.notes)
        for path in sorted(expected.keys() - present.keys()):
            report.problems.append(f"volume {n} ({root}): {path}: missing")
        for path in sorted(present.keys() - expected.keys()):
            report.problems.append(f"volume {n} ({root}): {path}: extra file, not in the manifest")
        for path in sorted(expected.keys() & present.keys()):
            want = expected[path]
            p = present[path]
            if not p.is_file() or p.is_symlink():
                report.problems.append(f"volume {n} ({root}): {path}: not a regular file")
                continue
            size = p.stat().st_size
            report.files += 1
            if size != want.size:
                report.problems.append(
                    f"volume {n} ({root}): {path}: altered (size {size}, expected {want.size})"
                )
                advance(want.size)
                continue
            _, sha = file_sha256(p, buf, advance)
            report.bytes += size
            if sha != want.sha256:
                report.problems.append(f"volume {n} ({root}): {path}: altered (SHA-256 differs)")
    return report
