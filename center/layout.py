"""The center's directory layout: one place that says where everything lives under the center home.

::

    HOME/
      center.toml                    configuration (catalog URL, listen address, thresholds)
      keys/center.key, center.pub    the center's Ed25519 receipt-signing key (0600) and its public half
      catalog.db                     the SQLite catalog (default; PostgreSQL by URL in center.toml)
      inbox/<hospital>/              chroot of the hospital's SFTP account: root-owned, 0755
        incoming/                    the only place the account can write (append-only by sshd's deny list)
        receipts/                    signed receipts the agent fetches (root-owned, read-only to the account)
      store/<hospital>/<stream>/     the hospital's partition: verified changesets, out of the account's reach
      rejected/<hospital>/           uploads that failed verification, each beside a ``.reason`` file
      quarantine/<hospital>/         bad blobs 'center verify --heal-from' replaced, each beside a ``.reason``
      audit-heads/<fingerprint>/     (on a mirror) signed audit heads a primary copied: heads.log, head.json
      sshd/                          generated sshd_config, authorized_keys/<account>, host keys
      ingest.lock, replicate.lock    one ingest / one replication at a time (fcntl.flock)

A mirror center (another region) is a center home of its own with the same layout; the primary delivers
into the mirror's ``inbox/<hospital>/incoming`` like an agent would (docs/replication.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hakobune.naming import Stream, changeset_name, check_hospital_id


@dataclass(frozen=True)
class CenterLayout:
    home: Path

    @property
    def config(self) -> Path:
        return self.home / "center.toml"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def signing_key(self) -> Path:
        return self.keys / "center.key"

    @property
    def public_key(self) -> Path:
        return self.keys / "center.pub"

    @property
    def catalog_db(self) -> Path:
        return self.home / "catalog.db"

    @property
    def sshd(self) -> Path:
        return self.home / "sshd"

    def inbox(self, hospital: str) -> Path:
        return self.home / "inbox" / check_hospital_id(hospital)

    def incoming(self, hospital: str) -> Path:
        return self.inbox(hospital) / "incoming"

    def receipts(self, hospital: str) -> Path:
        return self.inbox(hospital) / "receipts"

    def store(self, hospital: str, stream: Stream) -> Path:
        return self.home / "store" / check_hospital_id(hospital) / stream

    def stored(self, hospital: str, stream: Stream, sequence: int) -> Path:
        return self.store(hospital, stream) / changeset_name(stream, sequence)

    def rejected(self, hospital: str) -> Path:
        return self.home / "rejected" / check_hospital_id(hospital)

    @property
    def store_root(self) -> Path:
        return self.home / "store"

    def quarantine(self, hospital: str) -> Path:
        return self.home / "quarantine" / check_hospital_id(hospital)

    @property
    def audit_heads(self) -> Path:
        return self.home / "audit-heads"

    @property
    def replicate_lock(self) -> Path:
        return self.home / "replicate.lock"
