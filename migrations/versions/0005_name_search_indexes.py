"""Indexes for patient name searches: prefix, exact and fuzzy PatientName matching.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

PatientName matching (store.matching) compares case-insensitively against the whole name
and each of its component groups (alphabetic=ideographic=phonetic), and fuzzy matching
against the beginnings of its folded words; none of that could use an index, so every name
search read every patient (bench/scale_bench.py: the cost grows with the catalog). The
matching SQL is unchanged; store.matching now ANDs it with a condition that every match
also meets and that these indexes answer (its docstring says why each one is implied):

- `patients_name_prefix`, `patients_name_group2_prefix`, `patients_name_group3_prefix`:
  btree (text_pattern_ops, so LIKE 'abc%' is an index range whatever the collation) on the
  first 64 characters of the lower-cased name, and of its second and third component
  groups. 64 characters, not the whole value: a btree row holds at most ~2700 bytes, and
  the store accepts names of any length (migrations/versions/0002); a prefix of the
  prefix is all a range needs.
- `patients_name_words`: GIN on `catalog_name_words(patient_name)`, the set of the folded
  name's words (NFKD, combining marks removed, lower case, split at ^ = , and spaces; each
  cut to 32 characters), as a tsvector built verbatim by array_to_tsvector (no text-search
  parsing or stemming), so `@@ 'gar':*` finds the names with a word beginning "gar". Names
  over 256 characters get NULL (a tsvector is bounded to 1 MB; such names are not real).
- `patients_name_many_groups` (names of more than three component groups, which the group
  indexes do not cover; a partial index, empty in a sane catalog) and `patients_name_length`
  (on length(patient_name), for the names over 256 characters that have no word vector; a
  full index, not a partial one, so ANALYZE keeps statistics on the length and the planner
  knows such names are rare): they keep the pre-filters implied for every value the store
  accepts.

Time on a big catalog: CREATE INDEX (not CONCURRENTLY: Alembic runs a revision in one
transaction) holds a SHARE lock on `patients` while it builds, which blocks ingest (every
update upserts its patient) but not queries. The indexes read only `patients`, which is
small beside instances (10 M instances is about 15,000 patients in bench/scale_bench.py's
catalog; a hospital's 150 M instances some millions of patients): seconds at 10 M, about a
minute per few million patients, dominated by the GIN build and the folding of each name.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fold of store.matching._fold, written out: the function must fold exactly as the
# fuzzy condition it pre-filters does.
_FOLD = r"lower(regexp_replace(normalize(name, NFKD), '[\u0300-\u036f]', '', 'g'))"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION catalog_name_words(name text) RETURNS tsvector
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$
            SELECT CASE WHEN length(name) <= 256 THEN array_to_tsvector(ARRAY(
                SELECT DISTINCT left(w, 32)
                FROM unnest(string_to_array(translate({_FOLD}, '^=,', '   '), ' ')) AS w
                WHERE w <> ''))
            END
        $$
        """
    )
    for name, expression in (
        ("patients_name_prefix", "patient_name"),
        ("patients_name_group2_prefix", "split_part(patient_name, '=', 2)"),
        ("patients_name_group3_prefix", "split_part(patient_name, '=', 3)"),
    ):
        op.execute(
            f"CREATE INDEX {name} ON patients (left(lower({expression}), 64) text_pattern_ops)"
        )
    op.execute(
        "CREATE INDEX patients_name_words ON patients USING gin (catalog_name_words(patient_name))"
    )
    op.execute(
        "CREATE INDEX patients_name_many_groups ON patients (id) WHERE patient_name LIKE '%=%=%=%'"
    )
    op.execute("CREATE INDEX patients_name_length ON patients (length(patient_name))")


def downgrade() -> None:
    for name in (
        "patients_name_length",
        "patients_name_many_groups",
        "patients_name_words",
        "patients_name_group3_prefix",
        "patients_name_group2_prefix",
        "patients_name_prefix",
    ):
        op.execute(f"DROP INDEX {name}")
    op.execute("DROP FUNCTION catalog_name_words(text)")
