"""Index long text by its SHA-256: any length of PatientID, AccessionNumber, Modality...

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A btree index row holds at most ~2700 bytes, so an index on a text column made PostgreSQL
refuse (SQLSTATE 54000, "index row size ... exceeds btree maximum") any row whose value is
a few kilobytes of incompressible text: an instance the receiver had acknowledged could
never be stored. The data stays exactly as received (text columns, no length limit); only
the indexes change. Every index and unique constraint on free text now holds
`catalog_key(column)`, the column's SHA-256 (32 bytes, whatever its length), and queries
filter on `catalog_key(column) = catalog_key(value) AND column = value` so the index is
used and a hash collision can never match a wrong row. Uniqueness (a patient's identity, a
merge conflict's identity) relies on SHA-256 being collision resistant, which md5 is not.

`catalog_key` is declared IMMUTABLE although convert_to() is only STABLE: convert_to to
UTF8 gives the same bytes for the same text in a given database (its encoding is fixed at
creation), which is what an index needs. UIDs are validated to at most 64 characters
before they reach the database, so their indexes stay as they are.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION catalog_key(value text) RETURNS bytea
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$ SELECT sha256(convert_to(value, 'UTF8')) $$
        """
    )
    op.execute("ALTER TABLE patients DROP CONSTRAINT patients_identity_key")
    op.execute(
        "CREATE UNIQUE INDEX patients_identity_key ON patients"
        " (catalog_key(patient_id), catalog_key(issuer_of_patient_id))"
    )
    op.execute("DROP INDEX studies_accession_number")
    op.execute("CREATE INDEX studies_accession_number ON studies (catalog_key(accession_number))")
    op.execute("DROP INDEX series_modality_keyset")
    op.execute("CREATE INDEX series_modality_keyset ON series (catalog_key(modality), id DESC)")
    op.execute("ALTER TABLE merge_conflicts DROP CONSTRAINT merge_conflicts_identity_key")
    op.execute(
        "CREATE UNIQUE INDEX merge_conflicts_identity_key ON merge_conflicts"
        " (kind, subject_uid, catalog_key(rejected_value))"
    )


def downgrade() -> None:
    # Fails (54000) if a stored value is too long for a plain btree index: such rows can
    # only be kept with the indexes of this revision.
    op.execute("DROP INDEX merge_conflicts_identity_key")
    op.execute(
        "ALTER TABLE merge_conflicts ADD CONSTRAINT merge_conflicts_identity_key"
        " UNIQUE (kind, subject_uid, rejected_value)"
    )
    op.execute("DROP INDEX series_modality_keyset")
    op.execute("CREATE INDEX series_modality_keyset ON series (modality, id DESC)")
    op.execute("DROP INDEX studies_accession_number")
    op.execute("CREATE INDEX studies_accession_number ON studies (accession_number)")
    op.execute("DROP INDEX patients_identity_key")
    op.execute(
        "ALTER TABLE patients ADD CONSTRAINT patients_identity_key"
        " UNIQUE (patient_id, issuer_of_patient_id)"
    )
    op.execute("DROP FUNCTION catalog_key(text)")
