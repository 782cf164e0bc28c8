"""The catalog's schema history (Alembic), and the few calls that run it.

This package knows nothing of the store: it is given a database URL and moves the schema.
Alembic is configured in code (`alembic_config`), with `script_location` pointing at this
package's folder, so migrating works from any working directory and from an installed
wheel. `alembic.ini` at the repository root is for running the `alembic` command by hand
(`alembic -x url=postgresql://... upgrade head`). The store only reads which revision a
database is at and compares it with `head_revisions()`, which its entry point hands it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL

from seriesflow.dbencoding import encoding_problem

SCRIPT_LOCATION = Path(__file__).resolve().parent


def sqlalchemy_url(url: str) -> str:
    """A libpq connection string in SQLAlchemy's psycopg 3 form.

    URIs (postgresql://... or postgres://...) keep everything after the scheme, including
    a query string such as the embedded server's `?host=/socket/dir`, which SQLAlchemy
    hands to psycopg. key=value strings (`host=/tmp dbname=sf`) are rebuilt as a URL.
    URLs already naming a driver (postgresql+psycopg://...) are returned unchanged.
    """
    parts = urlsplit(url)
    if parts.scheme in {"postgresql", "postgres"}:
        return urlunsplit(parts._replace(scheme="postgresql+psycopg"))
    if parts.scheme.startswith("postgresql+"):
        return url
    if "://" in url or "=" not in url:
        raise ValueError(
            f"unsupported database URL scheme {parts.scheme!r}: expected postgresql://..."
        )
    params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    port = params.pop("port", None)
    return URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        database=params.pop("dbname", None),
        # A host that is a socket folder goes in the query string, as psycopg expects.
        host=None,
        port=int(port) if port and "," not in str(port) else None,
        query=params,
    ).render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` that needs no alembic.ini and no particular cwd."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # Passed as an attribute, not a main option: ConfigParser would treat a % in a
    # password as interpolation syntax.
    config.attributes["url"] = url
    return config


def head_revisions() -> frozenset[str]:
    """The revisions a fully migrated database is at."""
    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


def require_utf8(url: str) -> None:
    """RuntimeError, naming the fix, unless `url`'s database is UTF8 (see dbencoding).

    Checked with psycopg alone: SQLAlchemy's first connect to a SQL_ASCII database already
    fails, with a message about bytes that names neither."""
    parts = urlsplit(url)
    if parts.scheme.startswith("postgresql+"):
        url = urlunsplit(parts._replace(scheme="postgresql"))
    with psycopg.connect(url, connect_timeout=10) as conn:
        problem = encoding_problem(conn)
    if problem is not None:
        raise RuntimeError(problem)


def current_revisions(url: str) -> frozenset[str]:
    """The revisions `url` is at; empty for a database never migrated."""
    require_utf8(url)
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return frozenset(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate `url` to `revision`; RuntimeError, naming the fix, for a non-UTF8 database."""
    require_utf8(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


__all__ = [
    "SCRIPT_LOCATION",
    "alembic_config",
    "current_revisions",
    "downgrade",
    "head_revisions",
    "require_utf8",
    "sqlalchemy_url",
    "upgrade",
]
