"""Alembic environment: runs revisions against the database the caller names.

The URL comes, in this order, from `config.attributes["url"]` (set by `alembic_config`, which
avoids ConfigParser's %-interpolation of passwords), `-x url=...` on the alembic command
line, `sqlalchemy.url` in the ini file, or SERIESFLOW_DATABASE_URL. libpq URIs
(postgresql://...) are turned into SQLAlchemy's psycopg 3 form.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from seriesflow.migrations import sqlalchemy_url

config = context.config

# Only the hand-run `alembic` command has an ini file; the store configures its own logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("SERIESFLOW_DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=postgresql://... or set SERIESFLOW_DATABASE_URL"
        )
    return sqlalchemy_url(str(url))


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=_database_url(), literal_binds=True, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


# Any fixed key: several store pods migrate at once on install (their init containers), and
# the lock makes the others wait and then find the schema already at head.
MIGRATION_LOCK_KEY = 0x5E41E5F1


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
        connection.commit()  # the session-level lock outlives this transaction
        try:
            # transaction_per_migration: a failed revision leaves the schema at the previous one.
            context.configure(
                connection=connection, target_metadata=None, transaction_per_migration=True
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
