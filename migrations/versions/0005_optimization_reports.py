"""Deploy-time optimisation: what serving processes report of it, per endpoint and revision.

The `optimize` setting itself is stored in each revision's `settings` JSON (no column: it
rolls out and back with the other settings); this adds where the figures are kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("optimization", _json(), nullable=True))
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("optimization", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_column("optimization")
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.drop_column("optimization")
