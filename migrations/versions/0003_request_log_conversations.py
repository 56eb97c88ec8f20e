"""request log: tool calls and response format

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("request_log", sa.Column("tool_calls", sa.String(length=400), nullable=True))
    op.add_column("request_log", sa.Column("response_format", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("request_log", "response_format")
    op.drop_column("request_log", "tool_calls")
