"""Completion decided by the store across receivers; the series event log (an outbox).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- `series_holds`: one row per (series, receiver) that has reported the series. `open` while
  the receiver holds the series back (it has instances not yet reported idle), with the
  time the hold lapses unless renewed; `open_seq` / `idle_seq` are the receiver's positions
  (SeriesUpdate.receiver_sequence) of the latest hold and idle reports, which order one
  receiver's reports across reconnects and store replicas. Keyed by the series UID's text
  (a hold can precede the series' first row) and the receiver id's hash (any length).
- `series.completion_version` (how many times the series became COMPLETE) and
  `series.completion_detail` (why, in words); reason HOLD_EXPIRED joins the known reasons.
- `series_events`: every committed change to a series, written in the change's own
  transaction. `cursor` comes from the single row of `series_event_log`, incremented by
  each writing transaction just before it commits: that row lock makes cursors gapless and
  their order the commit order, so a reader that has seen cursor N has seen every event
  below N. `pruned_through` is the highest cursor retention has deleted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.TIMESTAMP(timezone=True)
_REASONS_0001 = "'UNSPECIFIED', 'IDLE', 'RELEASED', 'MAX_AGE'"
_REASONS = "'UNSPECIFIED', 'IDLE', 'RELEASED', 'MAX_AGE', 'HOLD_EXPIRED'"


def upgrade() -> None:
    op.add_column(
        "series",
        sa.Column("completion_version", sa.Integer, nullable=False, server_default="0"),
    )
    op.add_column(
        "series", sa.Column("completion_detail", sa.Text, nullable=False, server_default="")
    )
    # Series completed before this revision count as completed once.
    op.execute("UPDATE series SET completion_version = 1 WHERE status = 'COMPLETE'")
    op.drop_constraint("series_completion_reason_known", "series")
    op.create_check_constraint(
        "series_completion_reason_known", "series", f"completion_reason IN ({_REASONS})"
    )

    op.create_table(
        "series_holds",
        sa.Column("series_instance_uid", sa.Text, nullable=False),
        sa.Column("receiver_id", sa.Text, nullable=False),
        sa.Column("open", sa.Boolean, nullable=False),
        sa.Column("open_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("idle_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.execute(
        "CREATE UNIQUE INDEX series_holds_identity_key ON series_holds"
        " (series_instance_uid, catalog_key(receiver_id))"
    )
    # The expiry sweep looks only at open holds, oldest deadline first.
    op.execute("CREATE INDEX series_holds_open_expiry ON series_holds (expires_at) WHERE open")

    op.create_table(
        "series_event_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_cursor", sa.BigInteger, nullable=False),
        sa.Column("pruned_through", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="series_event_log_single_row"),
    )
    op.execute("INSERT INTO series_event_log (id, last_cursor, pruned_through) VALUES (1, 0, 0)")
    op.create_table(
        "series_events",
        sa.Column("cursor", sa.BigInteger, primary_key=True),
        sa.Column("series_fk", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("completion_version", sa.Integer, nullable=False),
        sa.Column("completion_reason", sa.Text, nullable=False),
        sa.Column("completion_detail", sa.Text, nullable=False, server_default=""),
        sa.Column("instances_added", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("num_instances", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("occurred_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "kind IN ('CREATED', 'INSTANCES_ADDED', 'COMPLETED', 'REOPENED')",
            name="series_events_kind_known",
        ),
    )
    # Retention deletes by age; cursor order is commit order, so this is also cursor order.
    op.create_index("series_events_occurred_at", "series_events", ["occurred_at"])


def downgrade() -> None:
    op.drop_table("series_events")
    op.drop_table("series_event_log")
    op.drop_table("series_holds")
    op.execute(
        "UPDATE series SET completion_reason = 'IDLE' WHERE completion_reason = 'HOLD_EXPIRED'"
    )
    op.drop_constraint("series_completion_reason_known", "series")
    op.create_check_constraint(
        "series_completion_reason_known", "series", f"completion_reason IN ({_REASONS_0001})"
    )
    op.drop_column("series", "completion_detail")
    op.drop_column("series", "completion_version")
