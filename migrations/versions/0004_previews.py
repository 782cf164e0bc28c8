"""Series previews and the representative instance named.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- `instances.slice_position`: where the image lies along its slice normal (mm), from the
  receiver; NULL when the header lacks the geometry. With InstanceNumber it orders a
  series' instances, which is what "the middle instance" means (store.previews).
- `series.representative_sop_instance_uid`: the instance `representative_header` was
  taken from. The store keeps the header whose instance is nearest the series' middle, so
  it must know which instance each candidate came from; '' for headers stored before
  this revision (they lose to any header that names a stored instance).
- `series_previews`: at most one preview per series, the PNG of the instance nearest the
  middle or why there is none (`failure_reason`). Its own table, not columns of `series`:
  a PNG is up to 2 MiB, and every series query reads `series` rows; the catalog stays
  narrow and a preview is read only when asked for. Exactly one of png / failure_reason
  is set (the check), so a reader never has to guess which one holds. Deleted with its
  series (series are not deleted today; the cascade keeps that true if they ever are).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.TIMESTAMP(timezone=True)
_FAILURES = "'no_pixel_data', 'undecodable', 'unsupported', 'too_large', 'failed'"


def upgrade() -> None:
    op.add_column("instances", sa.Column("slice_position", postgresql.DOUBLE_PRECISION))
    op.add_column(
        "series",
        sa.Column("representative_sop_instance_uid", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "series_previews",
        sa.Column(
            "series_fk",
            sa.BigInteger,
            sa.ForeignKey("series.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sop_instance_uid", sa.Text, nullable=False),
        sa.Column("png", postgresql.BYTEA, nullable=False, server_default=""),
        sa.Column("width", sa.Integer, nullable=False, server_default="0"),
        sa.Column("height", sa.Integer, nullable=False, server_default="0"),
        sa.Column("frame", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window", sa.Text, nullable=False, server_default=""),
        sa.Column("window_center", postgresql.DOUBLE_PRECISION),
        sa.Column("window_width", postgresql.DOUBLE_PRECISION),
        sa.Column("failure_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("failure_detail", sa.Text, nullable=False, server_default=""),
        sa.Column("rendered_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            f"failure_reason IN ('', {_FAILURES})", name="series_previews_failure_known"
        ),
        sa.CheckConstraint(
            "(length(png) > 0) <> (failure_reason <> '')",
            name="series_previews_png_or_failure",
        ),
    )


def downgrade() -> None:
    op.drop_table("series_previews")
    op.drop_column("series", "representative_sop_instance_uid")
    op.drop_column("instances", "slice_position")
