"""join tokens

join_token: the single-use, expiring tokens `vpnagent join` spends on POST /node/join for
the node's API key (issue 16). Only the SHA-256 of a token is kept; used_at is set when it
is spent. A new table: nothing existing changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 19:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'join_token',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('used_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['node_id'], ['node.id'], name=op.f('fk_join_token_node_id_node')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_join_token')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_join_token_token_hash')),
    )
    op.create_index(op.f('ix_join_token_node_id'), 'join_token', ['node_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema (unspent join tokens are lost; issue new ones)."""
    op.drop_index(op.f('ix_join_token_node_id'), table_name='join_token')
    op.drop_table('join_token')
