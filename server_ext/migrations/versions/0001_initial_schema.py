"""initial schema: the tables vpnagent made with create_all before it had migrations

A database from such an earlier install (tables, no alembic_version) is stamped at this
revision instead of running it (server_ext/schema.py), so its rows are kept.

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 01:40:45.564218

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('collaboration',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_collaboration')),
    sa.UniqueConstraint('name', name=op.f('uq_collaboration_name'))
    )
    op.create_table('organization',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organization')),
    sa.UniqueConstraint('name', name=op.f('uq_organization_name'))
    )
    op.create_table('collaboration_member',
    sa.Column('collaboration_id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['collaboration_id'], ['collaboration.id'], name=op.f('fk_collaboration_member_collaboration_id_collaboration')),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_collaboration_member_organization_id_organization')),
    sa.PrimaryKeyConstraint('collaboration_id', 'organization_id', name=op.f('pk_collaboration_member'))
    )
    op.create_table('node',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('collaboration_id', sa.Integer(), nullable=False),
    sa.Column('api_key_hash', sa.String(length=64), nullable=False),
    sa.Column('vpn_ip', sa.String(length=45), nullable=True),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['collaboration_id'], ['collaboration.id'], name=op.f('fk_node_collaboration_id_collaboration')),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_node_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_node')),
    sa.UniqueConstraint('api_key_hash', name=op.f('uq_node_api_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_node_name')),
    sa.UniqueConstraint('vpn_ip', name=op.f('uq_node_vpn_ip'))
    )
    op.create_table('task',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('image', sa.String(length=512), nullable=False),
    sa.Column('collaboration_id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('input', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['collaboration_id'], ['collaboration.id'], name=op.f('fk_task_collaboration_id_collaboration')),
    sa.ForeignKeyConstraint(['parent_id'], ['task.id'], name=op.f('fk_task_parent_id_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task'))
    )
    op.create_table('user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('api_key_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_user_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user')),
    sa.UniqueConstraint('api_key_hash', name=op.f('uq_user_api_key_hash'))
    )
    op.create_table('certificate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('not_after', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], name=op.f('fk_certificate_node_id_node')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_certificate')),
    sa.UniqueConstraint('serial', name=op.f('uq_certificate_serial'))
    )
    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], name=op.f('fk_run_node_id_node')),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_run_organization_id_organization')),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_run_task_id_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run'))
    )
    op.create_table('port',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_port_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_port'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('port')
    op.drop_table('run')
    op.drop_table('certificate')
    op.drop_table('user')
    op.drop_table('task')
    op.drop_table('node')
    op.drop_table('collaboration_member')
    op.drop_table('organization')
    op.drop_table('collaboration')
