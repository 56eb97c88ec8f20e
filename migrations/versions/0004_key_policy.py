"""key policy: limits and allowed models on api keys; usage counters and concurrency leases

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("budget_period", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("allowed_models", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("policy_version", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "key_usage",
        sa.Column("key_id", _ID, nullable=False),
        sa.Column("span", sa.String(length=8), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "span", "starts_at", name=op.f("pk_key_usage")),
    )
    op.create_table(
        "key_leases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("key_id", _ID, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_leases")),
    )
    op.create_index("ix_key_leases_key_id", "key_leases", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_key_leases_key_id", table_name="key_leases")
    op.drop_table("key_leases")
    op.drop_table("key_usage")
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "policy_version",
            "allowed_models",
            "budget_period",
            "budget_tokens",
            "concurrency",
            "tpm",
            "rpm",
        ):
            batch.drop_column(column)
