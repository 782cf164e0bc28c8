"""A fresh PostgreSQL database for one benchmark run, dropped when the run ends.

    with bench_database(args.database_url, workdir) as (url, server_url):
        migrations.upgrade(url)
        ...

The server is --database-url's (or SERIESFLOW_DATABASE_URL's) when given, else an embedded
PostgreSQL (pgserver) in `workdir`, stopped on exit. Either way the run gets a database of
its own (bench_<random>), created empty and dropped WITH (FORCE) afterwards, so a run never
sees or leaves another run's rows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def bench_database(database_url: str | None, workdir: Path) -> Iterator[tuple[str, str]]:
    """(URL of a new empty database, URL of its server's maintenance database)."""
    embedded = None
    server_url = database_url or os.environ.get("SERIESFLOW_DATABASE_URL") or ""
    if not server_url:
        from seriesflow.store.embedded_postgres import EmbeddedPostgres

        embedded = EmbeddedPostgres(workdir)
        server_url = embedded.url
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(server_url)
        params["dbname"] = name
        try:
            yield make_conninfo(**params), server_url
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if embedded is not None:
            embedded.stop()
