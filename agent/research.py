"""The research stream at the hospital (DESIGN §10): its builder, and installing its keys.

The research stream rides on the clinical sync: the same scan, the same file reads (the reader processes
de-identify what they read, :func:`agent.changeset.read_patients_research`), its own chain, epoch (sealed to
the analysis center's key), ``sent_unit`` ledger and consent handling (a ``research`` opt-out keeps the
patient out of it; a late one sends a tombstone).  :class:`ResearchBuilder` is the clinical
:class:`~agent.changeset.Builder` with three differences: it sends research encodings, its deletions name
research keys, and it keeps each patient's birth date so that ages stay right when only a lab file
changed — and re-reads a patient whose birth date changed, because every age sent before is then stale.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from agent.changeset import Builder, PatientResult, UnitResult, read_patient, whole_patient
from agent.config import config_path, load_config
from agent.consent import ConsentSnapshot
from agent.deidentify import Pseudonymizer
from agent.linkage import load_linkage_key, write_linkage_key
from agent.ssmix2.layout import patient_folder
from hakobune.durable import fsync_dir
from hakobune.errors import ConfigError
from hakobune.keys import RecipientPublicKey, load_recipient_public, write_key
from hakobune.sealed import ChangesetWriter

DEFAULT_ANALYSIS_KEY = "keys/analysis.pub"
DEFAULT_LINKAGE_KEY = "keys/linkage.key"


class ResearchBuilder(Builder):
    """Builds the research changeset of a sync from the same per-patient read results as the clinical one."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        writer: ChangesetWriter,
        *,
        sequence: int,
        token_key: bytes,
        pseudonymizer: Pseudonymizer,
        root: Path,
        consent: ConsentSnapshot,
        fresh: bool,
        now: str,
    ) -> None:
        super().__init__(
            conn,
            writer,
            stream="research",
            sequence=sequence,
            token_key=token_key,
            consent=consent,
            fresh=fresh,
            now=now,
        )
        self.pseudonymizer = pseudonymizer
        self.root = root
        #: Patients read again because their birth date changed.
        self.refreshed = 0
        self._birth_rows: list[tuple[str, str]] = []

    def erase(self, patient_id: str) -> None:
        super().erase(patient_id)
        self.conn.execute("DELETE FROM research_birth WHERE patient_id = ?", (patient_id,))

    def _quarantine(self, relpath: str, reason: str) -> None:
        """The clinical builder records quarantined files (both builders see the same reads); counting them
        twice would double the figures and the guard's share."""

    def _records(self, unit: UnitResult) -> dict[str, tuple[str, bytes]]:
        if unit.research is None:
            raise ValueError(f"unit {unit.unit!r} was read without de-identification")
        return unit.research

    def _del(self, unit: str, item: str) -> bytes:
        pid, care_date, data_type, order_no = unit.split("/")
        key = self.pseudonymizer.key(pid, care_date, data_type, order_no, item)
        return b'{"del":' + orjson.dumps(key) + b"}\n"

    def _prepare(self, result: PatientResult) -> PatientResult:
        read = result.birth_read
        if read is None:
            return result
        pid = result.patient_id
        if self.fresh:  # a baseline reads every patient whole: the ages were made from this birth date
            self._birth_rows.append((pid, read))
            self._flush_births()
            return result
        row = self.conn.execute(
            "SELECT birth_date FROM research_birth WHERE patient_id = ?", (pid,)
        ).fetchone()
        if row is not None and row[0] == read:
            return result
        if self._sent_before(pid):
            result = read_patient(
                str(self.root), whole_patient(self.root, patient_folder(pid)), self.pseudonymizer, read
            )
            read = result.birth_read or read
            self.refreshed += 1
        self.conn.execute(_UPSERT_BIRTH, (pid, read))
        return result

    def _sent_before(self, pid: str) -> bool:
        first = self.conn.execute(
            "SELECT 1 FROM sent_unit WHERE stream = 'research' AND patient_id = ? LIMIT 1", (pid,)
        ).fetchone()
        return first is not None

    def _flush_births(self, force: bool = False) -> None:
        if self._birth_rows and (force or len(self._birth_rows) >= 2000):
            self.conn.executemany(_UPSERT_BIRTH, self._birth_rows)
            self._birth_rows = []

    def finish(self) -> None:
        super().finish()
        self._flush_births(force=True)


_UPSERT_BIRTH = (
    "INSERT INTO research_birth (patient_id, birth_date) VALUES (?, ?)"
    " ON CONFLICT (patient_id) DO UPDATE SET birth_date = excluded.birth_date"
)


def known_births(conn: sqlite3.Connection, patient_ids: list[str]) -> dict[str, str]:
    """The birth dates the agent keeps for these patients (read inside the build's transaction)."""
    births: dict[str, str] = {}
    for pid in patient_ids:
        row = conn.execute("SELECT birth_date FROM research_birth WHERE patient_id = ?", (pid,)).fetchone()
        if row is not None:
            births[pid] = row[0]
    return births


# --- installing the keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledResearchKeys:
    analysis_key: Path
    analysis_fingerprint: str
    linkage_key: Path
    config_updated: bool


def install_research_keys(home: Path, *, analysis_key: Path, linkage_key: Path) -> InstalledResearchKeys:
    """Install the analysis center's public key and the network's linkage key into the agent home and turn
    the research stream on (a ``[research]`` section in ``agent.toml``).  Both files are checked first.
    Installing the same keys again changes nothing; a different linkage key is refused (every link made
    so far would stop matching); a different analysis key replaces the old one (the next sync starts a
    research baseline sealed to it)."""
    return install_research_key_values(
        home, analysis=load_recipient_public(analysis_key), linkage=load_linkage_key(linkage_key)
    )


def install_research_key_values(
    home: Path, *, analysis: RecipientPublicKey, linkage: bytes
) -> InstalledResearchKeys:
    """:func:`install_research_keys` with the keys in hand (local provisioning: the drill, tests)."""
    cfg = load_config(home)
    if cfg.research is not None:
        analysis_target, linkage_target = cfg.research.analysis_key, cfg.research.linkage_key
    else:
        analysis_target, linkage_target = home / DEFAULT_ANALYSIS_KEY, home / DEFAULT_LINKAGE_KEY
    if linkage_target.exists():
        if load_linkage_key(linkage_target) != linkage:
            raise ConfigError(
                f"{linkage_target}: a different linkage key is installed; refusing to replace it "
                "(cross-hospital links would stop matching)"
            )
    else:
        write_linkage_key(linkage_target, linkage)
    _install_public(analysis_target, analysis)
    updated = False
    if cfg.research is None:
        _append_research_section(config_path(home), analysis_target, linkage_target, home)
        updated = True
    return InstalledResearchKeys(analysis_target, analysis.fingerprint, linkage_target, updated)


def _install_public(target: Path, key: RecipientPublicKey) -> None:
    if target.exists() and load_recipient_public(target) == key:
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_key(tmp, key)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _append_research_section(path: Path, analysis: Path, linkage: Path, home: Path) -> None:
    def shown(p: Path) -> str:
        return str(p.relative_to(home)) if p.is_relative_to(home) else str(p)

    text = path.read_text(encoding="utf-8")
    section = (
        "\n[research]\n"
        f'analysis_key = "{shown(analysis)}"   # the analysis center\'s public key\n'
        f'linkage_key = "{shown(linkage)}"     # the network\'s linkage key (0600)\n'
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n" + section)
        f.flush()
        os.fsync(f.fileno())
    shutil.copymode(path, tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    load_config(home)  # the file still parses and now has research on
