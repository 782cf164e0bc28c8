"""Alembic: empty -> head -> base, and the store's refusal to serve off head."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import new_database

from seriesflow import migrations
from seriesflow.cli import migrate
from seriesflow.migrations import sqlalchemy_url
from seriesflow.store.config import StoreConfig
from seriesflow.store.errors import DatabaseFault, SchemaNotAtHead
from seriesflow.store.schema import require_head

TABLES = {"patients", "studies", "series", "instances", "merge_conflicts"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_from_empty_creates_every_table_then_downgrade_removes_them(
    database_url: str,
) -> None:
    assert _tables(database_url) == frozenset()
    migrations.upgrade(database_url)
    assert TABLES | {"alembic_version"} <= _tables(database_url)
    assert migrations.current_revisions(database_url) == migrations.head_revisions()
    migrations.downgrade(database_url)
    assert _tables(database_url) == {"alembic_version"}
    assert migrations.current_revisions(database_url) == frozenset()
    # And up again: the downgrade left nothing behind that blocks a new upgrade.
    migrations.upgrade(database_url)
    assert _tables(database_url) >= TABLES


def test_migrating_works_from_any_working_directory(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    migrations.upgrade(database_url)
    assert _tables(database_url) >= TABLES


def test_require_head_refuses_an_empty_database_naming_the_fix(database_url: str) -> None:
    with pytest.raises(SchemaNotAtHead, match="seriesflow migrate"):
        require_head(database_url, migrations.head_revisions())


def test_require_head_refuses_a_database_at_another_revision(database_url: str) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'someoldrev'")
    with pytest.raises(SchemaNotAtHead, match=r"someoldrev.*seriesflow migrate"):
        require_head(database_url, migrations.head_revisions())


def test_require_head_accepts_a_migrated_database(database_url: str) -> None:
    migrations.upgrade(database_url)
    require_head(database_url, migrations.head_revisions())


def test_migrate_main_brings_the_configured_database_to_head(database_url: str) -> None:
    assert migrate.main(StoreConfig(database_url=database_url)) == 0
    require_head(database_url, migrations.head_revisions())


def test_migrate_main_fails_with_exit_code_on_unreachable_database() -> None:
    url = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    assert migrate.main(StoreConfig(database_url=url)) == 1


@pytest.fixture
def sql_ascii_url(postgres_server_url: str) -> Iterator[str]:
    """A database created the way old clusters and some hosted PostgreSQL defaults make it."""
    options = "ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    with new_database(postgres_server_url, options) as url:
        yield url


def test_migrate_refuses_a_sql_ascii_database_naming_its_encoding_and_the_fix(
    sql_ascii_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR"):
        assert migrate.main(StoreConfig(database_url=sql_ascii_url)) == 1
    error = next(r for r in caplog.records if r.getMessage() == "migration failed")
    message = error.__dict__["fields"]["error"]
    assert "uses encoding SQL_ASCII" in message
    assert "ENCODING 'UTF8' TEMPLATE template0" in message
    assert _tables(sql_ascii_url) == set()  # nothing half-created


def test_the_store_refuses_a_sql_ascii_database_too(sql_ascii_url: str) -> None:
    with pytest.raises(DatabaseFault, match=r"uses encoding SQL_ASCII.*needs a UTF8 database"):
        require_head(sql_ascii_url, migrations.head_revisions())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/sf", "postgresql+psycopg://u:p@db:5432/sf"),
        ("postgres://u@db/sf?sslmode=require", "postgresql+psycopg://u@db/sf?sslmode=require"),
        (
            "postgresql://postgres:@/seriesflow?host=/tmp/pg/sock",
            "postgresql+psycopg://postgres:@/seriesflow?host=/tmp/pg/sock",
        ),
        ("postgresql+psycopg://u@db/sf", "postgresql+psycopg://u@db/sf"),
    ],
)
def test_sqlalchemy_url_converts_libpq_uris(given: str, expected: str) -> None:
    assert sqlalchemy_url(given) == expected


def test_sqlalchemy_url_rejects_other_databases() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        sqlalchemy_url("mysql://u@db/sf")


def test_alembic_ini_points_at_the_migrations_package() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "alembic.ini").read_text()
    assert "script_location = migrations" in text
    assert os.path.isfile(root / "migrations" / "env.py")


def test_sqlalchemy_url_converts_key_value_conninfo() -> None:
    converted = sqlalchemy_url("host=/tmp/pg dbname=sf user=postgres port=5433")
    assert converted.startswith("postgresql+psycopg://postgres@:5433/sf?")
    assert "host=%2Ftmp%2Fpg" in converted or "host=/tmp/pg" in converted
