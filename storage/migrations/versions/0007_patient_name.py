"""studies: the Patient's Name as sent, for the console's search by name

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('patient_name', sa.String(length=194), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('patient_name')
