"""The initial catalog: hospitals, changesets, waiting, tombstones, rejections.

On PostgreSQL ``changesets`` and ``tombstones`` are ``PARTITION BY LIST (hospital_id)``; their primary keys
start with ``hospital_id`` as a partitioned table's must.  The partitions themselves are created by
``Catalog.add_hospital`` (one per hospital); there is no default partition, so a row of a hospital that has
none is refused.  On SQLite the same tables are plain.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partitioned() -> dict[str, Any]:
    """Table options of a per-hospital partitioned table on this database."""
    if op.get_context().dialect.name == "postgresql":
        return {"postgresql_partition_by": "LIST (hospital_id)"}
    return {}


def upgrade() -> None:
    op.create_table(
        "hospitals",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("agent_key", sa.LargeBinary(), nullable=False),
        sa.Column("ssh_key", sa.Text(), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hospitals"),
        sa.CheckConstraint("length(agent_key) = 32", name="ck_hospitals_agent_key_length"),
    )
    # Ids that differ only in case would share an SFTP account (hkb-<id lower-cased>).
    op.create_index("ux_hospitals_id_folded", "hospitals", [sa.text("lower(id)")], unique=True)
    op.create_table(
        "changesets",
        sa.Column("hospital_id", sa.String(32), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("header_hash", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hospital_id", "stream", "sequence", name="pk_changesets"),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name="fk_changesets_hospital"),
        sa.CheckConstraint("stream IN ('clinical', 'research')", name="ck_changesets_stream"),
        sa.CheckConstraint("kind IN ('baseline', 'incremental')", name="ck_changesets_kind"),
        sa.CheckConstraint("sequence >= 0", name="ck_changesets_sequence"),
        sa.CheckConstraint("size >= 0", name="ck_changesets_size"),
        sa.CheckConstraint("patients >= 0", name="ck_changesets_patients"),
        **_partitioned(),
    )
    op.create_table(
        "waiting",
        sa.Column("hospital_id", sa.String(32), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hospital_id", "stream", "sequence", name="pk_waiting"),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name="fk_waiting_hospital"),
    )
    op.create_table(
        "tombstones",
        sa.Column("hospital_id", sa.String(32), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hospital_id", "stream", "token", name="pk_tombstones"),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name="fk_tombstones_hospital"),
        **_partitioned(),
    )
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(32), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
    )
    op.create_index("ix_rejections_hospital_at", "rejections", ["hospital_id", "at"])
    op.create_index("ix_rejections_at", "rejections", ["at"])


def downgrade() -> None:
    op.drop_index("ix_rejections_at", table_name="rejections")
    op.drop_index("ix_rejections_hospital_at", table_name="rejections")
    op.drop_table("rejections")
    op.drop_table("tombstones")  # on PostgreSQL its partitions go with it
    op.drop_table("waiting")
    op.drop_table("changesets")
    op.drop_index("ux_hospitals_id_folded", table_name="hospitals")
    op.drop_table("hospitals")
