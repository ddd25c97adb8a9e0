"""shared state of API replicas

What used to live in one API process moves into the database, so that several API
processes (gunicorn workers, or hosts behind a load balancer) on one database agree
(docs/operator-guide.md, "Scaling out"):
- server_identity: fingerprints of the CA and the token secret the first replica
  prepared with; a replica with other ones refuses to start instead of issuing tokens
  and certificates the others reject.
- openvpn_service: what the OpenVPN service (`vpnagent-server openvpn`) last saw through
  OpenVPN's management interface, with when; the metrics of every replica read it.
- event_counter: counters of events (address requests by status code) summed over all
  replicas.
New tables only: nothing existing changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'server_identity',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_server_identity')),
    )
    op.create_table(
        'openvpn_service',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('host', sa.String(length=256), nullable=False),
        sa.Column('seen_at', sa.DateTime(), nullable=False),
        sa.Column('openvpn_up', sa.Boolean(), nullable=False),
        sa.Column('connected', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_openvpn_service')),
    )
    op.create_table(
        'event_counter',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('label', sa.String(length=64), nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('name', 'label', name=op.f('pk_event_counter')),
    )


def downgrade() -> None:
    """Downgrade schema (the counters start again from 0)."""
    op.drop_table('event_counter')
    op.drop_table('openvpn_service')
    op.drop_table('server_identity')
