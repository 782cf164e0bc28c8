"""PatientName searches use the indexes of migrations/versions/0005 and find exactly what
the matching condition alone finds.

The catalog is a few thousand patients written straight into `patients` (the searches
read only that table's names; how rows get there is tested elsewhere), with ANALYZE, so
the planner picks the indexes on its own: no enable_seqscan games.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from seriesflow import migrations
from seriesflow.store import find, matching
from seriesflow.store.matching import Level

FAMILIES = ["Smith", "Jones", "García", "Müller", "Nguyễn", "Øvergaard", "Łukasik", "O'Brien",
            "Weiß", "Kowalski", "Brown", "Lefèvre", "Dvořák", "Cohen"]  # fmt: skip
GIVEN = ["José", "Jürgen", "Zoë", "Anna", "John", "Mary", "Søren", "François", "Wei", "Tarou"]
# Names that probe every edge of the pre-filters: groups, wildcard characters stored in
# names, trailing carets, more than three groups, a name longer than the word vector takes,
# compatibility characters whose NFKD has a space, empty groups, no name at all.
ODD = [
    "Doe^Jane", "DOE^JOHN^^", "doe", "Doerr^Max", "Sandoe^Ann", "Doe^Jane=山田^花子=やまだ^はなこ",
    "Yamada^Tarou=山田^太郎=やまだ^たろう", "=山田^太郎", "==やまだ^たろう", "A=B=C=Doe^Fourth",
    "Doe%^Percent", "Doe_^Under", "Do\\e^Back", "D\u00a0oe^Nbsp", "\ufb01sher^Lig", "",
    "Doe^" + "x" * 300, "Zed^" + "Doe " * 100, "\uff24\uff4f\uff45^Wide", "Déjà^Vu", "Dé^Jà=Dé^Jà",
    "Doe^Jane^^^=", "^Doe", "Garcia Lopez^Jose Maria", "o'brien^conan", "Doe^Ja'ne",
]  # fmt: skip
PATIENTS = 4000


@pytest.fixture(scope="module")
def catalog(postgres_server_url: str) -> Iterator[str]:
    from conftest import new_database

    with new_database(postgres_server_url) as url:
        migrations.upgrade(url)
        rng = random.Random(5)
        names = [f"{rng.choice(FAMILIES)}^{rng.choice(GIVEN)}" for _ in range(PATIENTS)]
        for n, name in enumerate(ODD):
            names[n * (PATIENTS // len(ODD))] = name
        with psycopg.connect(url, autocommit=True) as conn:
            with (
                conn.cursor() as cur,
                cur.copy("COPY patients (patient_id, patient_name) FROM STDIN") as copy,
            ):
                for n, name in enumerate(names):
                    copy.write_row((f"P{n}", name))
            # A study per patient, for the STUDY-level searches.
            conn.execute(
                "INSERT INTO studies (study_instance_uid, patient_fk)"
                " SELECT '1.2.3.' || id, id FROM patients"
            )
            conn.execute("ANALYZE studies")
            conn.execute("ANALYZE patients")
        yield url


def _where(value: str, fuzzy: bool, indexed: bool) -> tuple[str, dict[str, Any]]:
    attr = dataclasses.replace(matching.BY_TAG["00100010"], name_indexed=indexed)
    params = matching.Params()
    sql = matching.condition(attr, value, "PatientName", params, fuzzy) or "TRUE"
    return sql, params.values


def _ids(conn: psycopg.Connection[Any], value: str, fuzzy: bool, indexed: bool) -> set[int]:
    sql, params = _where(value, fuzzy, indexed)
    rows = conn.execute(f"SELECT p.id FROM patients p WHERE {sql}", params).fetchall()
    return {r[0] for r in rows}


def _plan(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    """The plan's nodes, one a line: node type, relation, index."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    lines: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        lines.append(
            f"{node['Node Type']} {node.get('Relation Name', '')} {node.get('Index Name', '')}"
        )
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    return "\n".join(lines)


VALUES = [
    "DOE*", "doe*", "Doe^Jane", "DOE^JANE", "doe", "Doe^J*", "D?e*", "Do*e^*", "*doe*",
    "山田*", "山田^太郎", "やまだ^たろう", "Yamada^Tarou=山田^太郎", "=山田*", "==やまだ*",
    "Doe^Fourth", "Fourth*", "Doe%*", "Doe_*", "Do\\e*", "Doe^x*", "^Doe", "^", "Doe^Jane^",
    "Sandoe*", "Dé*", "de*", "Dé^Jà", "Smith^Jo?n", "O'B*", "\uff24\uff4f\uff45*", "Ja*",
]  # fmt: skip
FUZZY = ["doe", "jan doe", "gar jos", "yam tar", "山田", "de ja", "dej", "fish", "ﬁsh", "o'b",
         "doe fourth", "zed doe", "lop mar", "d\u00a0oe", "ja'n", "\uff44\uff4f\uff45",
         "xxxx"]  # fmt: skip


@pytest.mark.parametrize("value", VALUES)
def test_a_name_search_with_the_prefilter_finds_what_the_condition_alone_finds(
    catalog: str, value: str
) -> None:
    with psycopg.connect(catalog) as conn:
        assert _ids(conn, value, False, True) == _ids(conn, value, False, False)


@pytest.mark.parametrize("value", FUZZY)
def test_a_fuzzy_search_with_the_prefilter_finds_what_the_condition_alone_finds(
    catalog: str, value: str
) -> None:
    with psycopg.connect(catalog) as conn:
        assert _ids(conn, value, True, True) == _ids(conn, value, True, False)


def test_the_odd_names_are_found_by_the_searches_meant_to_find_them(catalog: str) -> None:
    # Guards the comparisons above against vacuous agreement (both finding nothing).
    with psycopg.connect(catalog) as conn:
        assert len(_ids(conn, "DOE*", False, True)) >= 8
        assert len(_ids(conn, "Doe^Fourth", False, True)) == 1  # the 4th group
        assert len(_ids(conn, "やまだ^たろう", False, True)) >= 1  # the 3rd group
        assert len(_ids(conn, "zed doe", True, True)) == 1  # a name over 256 characters
        assert len(_ids(conn, "doe", True, True)) >= 10


def test_a_prefix_search_reads_the_name_prefix_index_not_every_patient(catalog: str) -> None:
    compiled = matching.compile_query(Level.PATIENT, [("PatientName", "DOE*")])
    sql = find._page_sql(compiled, after=False, offset=False)
    with psycopg.connect(catalog) as conn:
        plan = _plan(conn, sql, dict(compiled.params, rows=100))
    assert "patients_name_prefix" in plan
    assert "patients_name_group2_prefix" in plan
    assert "Seq Scan" not in plan


def test_an_exact_name_search_at_the_study_level_starts_from_the_name_index(
    catalog: str,
) -> None:
    compiled = matching.compile_query(Level.STUDY, [("PatientName", "Doe^Jane")])
    sql = find._page_sql(compiled, after=False, offset=False)
    with psycopg.connect(catalog) as conn:
        plan = _plan(conn, sql, dict(compiled.params, rows=101))
    assert "patients_name_prefix" in plan
    assert "Seq Scan patients" not in plan


def test_a_fuzzy_search_reads_the_name_words_index_once_for_all_its_words(
    catalog: str,
) -> None:
    compiled = matching.compile_query(Level.PATIENT, [("PatientName", "gar jos")], fuzzy=True)
    sql = find._page_sql(compiled, after=False, offset=False)
    with psycopg.connect(catalog) as conn:
        plan = _plan(conn, sql, dict(compiled.params, rows=100))
        row = conn.execute(
            "EXPLAIN (FORMAT TEXT) " + sql, dict(compiled.params, rows=100)
        ).fetchall()
    assert "patients_name_words" in plan
    assert "Seq Scan" not in plan
    # One tsquery of both words (a GIN search intersecting them), shown quoted in the plan.
    assert "''gar'':* & ''jos'':*" in "\n".join(r[0] for r in row)


def test_a_study_search_aggregates_the_series_of_the_page_only(catalog: str) -> None:
    # "smi" matches hundreds of patients' studies; a page of 10 must not aggregate them all.
    compiled = matching.compile_query(Level.STUDY, [("PatientName", "smi")], fuzzy=True)
    sql = find._page_sql(compiled, after=False, offset=False)
    params = dict(compiled.params, rows=10)
    with psycopg.connect(catalog) as conn:
        assert len(conn.execute(sql, params).fetchall()) == 10
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    loops: list[int] = []

    def walk(node: dict[str, Any]) -> None:
        if node["Node Type"] == "Aggregate":
            loops.append(node["Actual Loops"])
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    assert loops and max(loops) <= 10


def test_downgrade_to_0004_removes_the_indexes_and_upgrade_restores_them(
    database_url: str,
) -> None:
    def indexes() -> set[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'patients'"
            ).fetchall()
        return {r[0] for r in rows}

    migrations.upgrade(database_url)
    new = {"patients_name_prefix", "patients_name_group2_prefix", "patients_name_group3_prefix",
           "patients_name_words", "patients_name_many_groups", "patients_name_length"}  # fmt: skip
    assert new <= indexes()
    migrations.downgrade(database_url, "0004")
    assert not new & indexes()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regproc('catalog_name_words')").fetchone() == (None,)
    migrations.upgrade(database_url)
    assert new <= indexes()
