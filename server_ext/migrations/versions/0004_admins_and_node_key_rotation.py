"""admins, node key rotation, node last seen

admin: server administrators, in no organisation, who use /api/admin with their own API
key (token kind "admin"). node.key_version: counted up by every node key rotation; node
tokens carry it, so a rotation ends the old key's tokens too (existing nodes start at 1,
which is also what a node token from before this revision is taken to carry).
node.last_seen_at: when the node last got a token; NULL for existing nodes until they do.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# node is referenced by foreign keys (run, certificate): add and drop its columns in place,
# as 0003 does for task and run.
IN_PLACE = {"recreate": "never"}


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'admin',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('api_key_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('removed_at', sa.DateTime(), nullable=True),
        sa.Column('key_version', sa.Integer(), server_default='1', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_admin')),
        sa.UniqueConstraint('api_key_hash', name=op.f('uq_admin_api_key_hash')),
    )
    with op.batch_alter_table('node', schema=None, **IN_PLACE) as batch_op:
        batch_op.add_column(sa.Column('key_version', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    """Downgrade schema (admins are dropped; rotated node keys stay valid, their old tokens
    would work again until they expire)."""
    with op.batch_alter_table('node', schema=None, **IN_PLACE) as batch_op:
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('key_version')
    op.drop_table('admin')
