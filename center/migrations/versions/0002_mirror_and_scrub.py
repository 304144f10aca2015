"""What the mirror confirmed (``mirror_acks``) and the latest scrub of each hospital (``scrubs``).

Both are small (one row per hospital and stream and mirror, one row per hospital) and not partitioned.
``mirror_acks`` lets ``center replicate`` start where the mirror's signed receipts left off and gives
``center status`` the mirror's lag without reaching the mirror; ``scrubs`` gives it the last
``center verify`` result.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mirror_acks",
        sa.Column("hospital_id", sa.String(32), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("mirror", sa.String(32), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("header_hash", sa.String(64), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("hospital_id", "stream", "mirror", name="pk_mirror_acks"),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name="fk_mirror_acks_hospital"),
        sa.CheckConstraint("sequence >= 0 AND sent >= 0", name="ck_mirror_acks_sequence"),
    )
    op.create_table(
        "scrubs",
        sa.Column("hospital_id", sa.String(32), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blobs", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("healed", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("hospital_id", name="pk_scrubs"),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name="fk_scrubs_hospital"),
    )


def downgrade() -> None:
    op.drop_table("scrubs")
    op.drop_table("mirror_acks")
