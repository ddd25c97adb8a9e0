"""node events

node_event: what a node must hear about at once (a run for it, a change in its runs' task
families, its removal, a revoked certificate), written in the transaction that made the
change; every API replica reads it and pushes each row down the node's event stream
(GET /node/events, issue 17). Rows are kept for minutes. A new table: nothing existing
changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 21:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'node_event',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('detail', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_node_event')),
    )
    op.create_index(op.f('ix_node_event_node_id'), 'node_event', ['node_id'], unique=False)
    op.create_index(op.f('ix_node_event_created_at'), 'node_event', ['created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema (events in flight are dropped: nodes catch up at their next resync)."""
    op.drop_index(op.f('ix_node_event_created_at'), table_name='node_event')
    op.drop_index(op.f('ix_node_event_node_id'), table_name='node_event')
    op.drop_table('node_event')
