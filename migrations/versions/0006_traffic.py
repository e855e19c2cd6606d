"""Traffic: lanes (which revisions take calls, in which role and share), canary state, a
revision counter apart from the current revision, canary verdicts, and the per-revision
counts gateways report.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_revision", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("lanes", _json(), nullable=True))
        batch_op.add_column(sa.Column("canary", _json(), nullable=True))
    op.execute("UPDATE deployments SET last_revision = revision")
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", _json(), nullable=True))
    op.create_table(
        "traffic_counts",
        sa.Column("id", _id(), nullable=False),
        sa.Column("deployment_id", _id(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("gateway", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency", _json(), nullable=False),
        sa.Column("shadow_calls", sa.BigInteger(), nullable=False),
        sa.Column("shadow_errors", sa.BigInteger(), nullable=False),
        sa.Column("shadow_compared", sa.BigInteger(), nullable=False),
        sa.Column("shadow_disagreements", sa.BigInteger(), nullable=False),
        sa.Column("shadow_dropped", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_traffic_counts_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traffic_counts")),
    )
    with op.batch_alter_table("traffic_counts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_traffic_counts_deployment_id_ended_at", ["deployment_id", "ended_at"]
        )


def downgrade() -> None:
    op.drop_table("traffic_counts")
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.drop_column("verdict")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("canary")
        batch_op.drop_column("lanes")
        batch_op.drop_column("last_revision")
