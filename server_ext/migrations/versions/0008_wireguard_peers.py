"""WireGuard peers and the data plane per collaboration

For the peer-to-peer WireGuard data plane (issue 18). node.wg_public_key, wg_port,
wg_endpoints, wg_seen_ip, wg_updated_at: the WireGuard peer a node registered (PUT
/node/wireguard); NULL for every existing node until its agent registers. The key is unique
through a unique index (NULLs do not collide), which SQLite can add in place.
collaboration.data_plane: "openvpn" or "wireguard"; NULL, as for every existing
collaboration, means the server config's data_plane.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# node and collaboration are referenced by foreign keys: add and drop their columns in place,
# as 0003 and 0004 do.
IN_PLACE = {"recreate": "never"}


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('node', schema=None, **IN_PLACE) as batch_op:
        batch_op.add_column(sa.Column('wg_public_key', sa.String(length=44), nullable=True))
        batch_op.add_column(sa.Column('wg_port', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('wg_endpoints', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('wg_seen_ip', sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column('wg_updated_at', sa.DateTime(), nullable=True))
    op.create_index(op.f('ix_node_wg_public_key'), 'node', ['wg_public_key'], unique=True)
    with op.batch_alter_table('collaboration', schema=None, **IN_PLACE) as batch_op:
        batch_op.add_column(sa.Column('data_plane', sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Downgrade schema (registered WireGuard peers and per-collaboration planes are lost:
    every collaboration is back on OpenVPN)."""
    with op.batch_alter_table('collaboration', schema=None, **IN_PLACE) as batch_op:
        batch_op.drop_column('data_plane')
    op.drop_index(op.f('ix_node_wg_public_key'), table_name='node')
    with op.batch_alter_table('node', schema=None, **IN_PLACE) as batch_op:
        batch_op.drop_column('wg_updated_at')
        batch_op.drop_column('wg_seen_ip')
        batch_op.drop_column('wg_endpoints')
        batch_op.drop_column('wg_port')
        batch_op.drop_column('wg_public_key')
