"""user removal and key rotation

user.removed_at: a removed researcher's row stays (the list shows who went when), its key
and tokens no longer work. user.key_version: counted up by every key rotation; user tokens
carry it, so a rotation ends the old key's tokens too. Existing users start at 1, which is
also what a token from before this revision is taken to carry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:13:59.100510

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('key_version', sa.Integer(), server_default='1', nullable=False))


def downgrade() -> None:
    """Downgrade schema (removed users would come back: their key hashes stay unusable)."""
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('key_version')
        batch_op.drop_column('removed_at')
