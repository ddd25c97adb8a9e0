"""task contract, description, databases; per-organisation run input

For vantage6 4.x algorithms (issue 13). task.contract: what the algorithm expects from its
node, "vpnagent" (existing tasks) or "vantage6". task.description: vantage6's free text.
task.databases: vantage6's [{"label": ...}], existing tasks get []. run.input: the input
of one organisation when the task was created with vantage6's body (one input per
organisation); NULL, as for every existing run, means the task's input.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:02:11.418207

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# task and run are referenced by foreign keys, which the store enforces on SQLite too: the
# copy-and-move that batch mode may do there would fail on a store with rows. Adding and
# dropping a plain column is done in place (SQLite 3.35 or newer; Debian 12 has 3.40).
IN_PLACE = {"recreate": "never"}


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('task', schema=None, **IN_PLACE) as batch_op:
        batch_op.add_column(sa.Column('contract', sa.String(length=16), server_default='vpnagent', nullable=False))
        batch_op.add_column(sa.Column('description', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('databases', sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
    with op.batch_alter_table('run', schema=None, **IN_PLACE) as batch_op:
        batch_op.add_column(sa.Column('input', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema (per-organisation inputs and vantage6 task fields are lost)."""
    with op.batch_alter_table('run', schema=None, **IN_PLACE) as batch_op:
        batch_op.drop_column('input')
    with op.batch_alter_table('task', schema=None, **IN_PLACE) as batch_op:
        batch_op.drop_column('databases')
        batch_op.drop_column('description')
        batch_op.drop_column('contract')
