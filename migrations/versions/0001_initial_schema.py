"""Initial catalog: patients, studies, series, instances, merge_conflicts.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Every DICOM identifier is a text column with a unique index; rows reference each other by
surrogate bigint keys. Dates are DATE columns beside the raw text as received (an invalid
date is stored NULL and the raw text kept). Query filters and the newest-first keyset
(`id DESC`) each have an index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.TIMESTAMP(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True)


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=False, server_default="")


def upgrade() -> None:
    op.create_table(
        "patients",
        _id(),
        sa.Column("patient_id", sa.Text, nullable=False),
        _text("issuer_of_patient_id"),
        _text("patient_name"),
        sa.Column("patient_birth_date", sa.Date),
        _text("patient_birth_date_raw"),
        _text("patient_sex"),
        sa.Column("last_received_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="patients_identity_key"),
    )

    op.create_table(
        "studies",
        _id(),
        sa.Column("study_instance_uid", sa.Text, nullable=False, unique=True),
        # The study's patient is fixed by the first update that named the study (see
        # store.ingest for the conflict rule).
        sa.Column("patient_fk", sa.BigInteger, sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("study_date", sa.Date),
        _text("study_date_raw"),
        _text("study_time"),
        _text("study_description"),
        _text("accession_number"),
        _text("study_id"),
        _text("referring_physician_name"),
        sa.Column("first_received_at", TZ),
        sa.Column("last_received_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("studies_patient_keyset", "studies", ["patient_fk", sa.text("id DESC")])
    op.create_index("studies_accession_number", "studies", ["accession_number"])
    op.create_index("studies_study_date", "studies", ["study_date"])

    op.create_table(
        "series",
        _id(),
        sa.Column("series_instance_uid", sa.Text, nullable=False, unique=True),
        sa.Column("study_fk", sa.BigInteger, sa.ForeignKey("studies.id"), nullable=False),
        # Copied from the study at insert; a study's patient never changes, so this
        # denormalisation cannot go stale and lets patient_id filters use an index.
        sa.Column("patient_fk", sa.BigInteger, sa.ForeignKey("patients.id"), nullable=False),
        _text("modality"),
        sa.Column("series_number", sa.Integer),
        _text("series_description"),
        _text("body_part_examined"),
        _text("manufacturer"),
        _text("manufacturer_model_name"),
        _text("station_name"),
        _text("institution_name"),
        sa.Column("series_date", sa.Date),
        _text("series_date_raw"),
        _text("series_time"),
        _text("protocol_name"),
        _text("source_ae_title"),
        _text("called_ae_title"),
        _text("receiver_id"),
        sa.Column("completion_reason", sa.Text, nullable=False, server_default="UNSPECIFIED"),
        sa.Column("status", sa.Text, nullable=False, server_default="RECEIVING"),
        sa.Column("completed_at", TZ),
        sa.Column("num_instances", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("first_received_at", TZ),
        sa.Column("last_received_at", TZ),
        sa.Column(
            "text_decoding_fallbacks",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default="{}",
        ),
        sa.Column("representative_header", postgresql.JSONB),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('RECEIVING', 'COMPLETE')", name="series_status_known"),
        sa.CheckConstraint(
            "completion_reason IN ('UNSPECIFIED', 'IDLE', 'RELEASED', 'MAX_AGE')",
            name="series_completion_reason_known",
        ),
        sa.CheckConstraint("num_instances >= 0", name="series_num_instances_non_negative"),
    )
    # ListSeries filters, each paired with the id DESC keyset so a filtered page is an
    # index range scan.
    op.create_index("series_study_keyset", "series", ["study_fk", sa.text("id DESC")])
    op.create_index("series_patient_keyset", "series", ["patient_fk", sa.text("id DESC")])
    op.create_index("series_modality_keyset", "series", ["modality", sa.text("id DESC")])
    op.create_index("series_status_keyset", "series", ["status", sa.text("id DESC")])
    op.create_index("series_last_received_at", "series", ["last_received_at"])

    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.Text, primary_key=True),
        # No FOREIGN KEY on purpose: PostgreSQL checks one with a query per inserted row,
        # which cost ~40% of ingest throughput (measured with bench/store_bench.py). The
        # store is the only writer; it upserts the series row (and holds its lock) in the
        # same transaction before inserting any of its instances, and never deletes series.
        sa.Column("series_fk", sa.BigInteger, nullable=False),
        _text("sop_class_uid"),
        sa.Column("instance_number", sa.Integer),
        _text("transfer_syntax_uid"),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("received_at", TZ, nullable=False),
    )
    # GetSeries pages a series' instances by InstanceNumber (absent last), then UID.
    op.create_index(
        "instances_series_order",
        "instances",
        [
            "series_fk",
            sa.text("(COALESCE(instance_number, 2147483647))"),
            "sop_instance_uid",
        ],
    )

    op.create_table(
        "merge_conflicts",
        _id(),
        sa.Column("kind", sa.Text, nullable=False),
        # The identifier the conflict is about (a SOPInstanceUID, StudyInstanceUID or
        # SeriesInstanceUID), what the catalog kept for it, and what an update asked for.
        sa.Column("subject_uid", sa.Text, nullable=False),
        sa.Column("kept_value", sa.Text, nullable=False),
        sa.Column("rejected_value", sa.Text, nullable=False),
        _text("update_id"),
        _text("receiver_id"),
        sa.Column("occurrences", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("first_seen_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "kind IN ('instance_in_other_series', 'study_patient_mismatch',"
            " 'series_study_mismatch')",
            name="merge_conflicts_kind_known",
        ),
        sa.UniqueConstraint(
            "kind", "subject_uid", "rejected_value", name="merge_conflicts_identity_key"
        ),
    )
    op.create_index("merge_conflicts_last_seen", "merge_conflicts", ["last_seen_at"])


def downgrade() -> None:
    op.drop_table("merge_conflicts")
    op.drop_table("instances")
    op.drop_table("series")
    op.drop_table("studies")
    op.drop_table("patients")
