"""label intake queue: radiologists' SRs are read after the C-STORE is answered

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 08:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('label_intake_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('label_intake_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_label_intake_jobs_instance_id'), ['instance_id'],
                              unique=False)
        batch_op.create_index('ix_label_intake_jobs_state_created', ['state', 'created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('label_intake_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_label_intake_jobs_state_created')
        batch_op.drop_index(batch_op.f('ix_label_intake_jobs_instance_id'))

    op.drop_table('label_intake_jobs')
