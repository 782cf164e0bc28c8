"""Connections to PostgreSQL: which URL, the connection pool, and failure translation.

All database work goes through `Database.run(fn)`: it borrows a pooled connection, runs
`fn` in one transaction, retries deadlock/serialization failures, and turns every psycopg
error into a StoreError (store.errors) exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from seriesflow.store.config import StoreConfig
from seriesflow.store.errors import DatabaseUnavailable, RetryableConflict, StoreError, translate

_log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[tuple[object, ...]]

RETRIES = 5


def resolve_url(config: StoreConfig) -> tuple[str, Callable[[], None] | None]:
    """The configured database URL, or start the embedded PostgreSQL in data_dir.

    Returns the libpq URL and, for the embedded server, the function that stops it.
    """
    if config.database_url:
        return config.database_url, None
    try:
        from seriesflow.store.embedded_postgres import EmbeddedPostgres
    except ModuleNotFoundError as exc:
        if exc.name != "pgserver":
            raise
        raise RuntimeError(
            "no database configured and the embedded PostgreSQL is not installed: set "
            "SERIESFLOW_DATABASE_URL / --database-url, or install it with "
            "pip install 'seriesflow[embedded]'"
        ) from exc

    embedded = EmbeddedPostgres(config.data_dir)
    return embedded.url, embedded.stop


def libpq_url(url: str) -> str:
    """A URL psycopg.connect accepts: SQLAlchemy's postgresql+driver:// scheme dropped."""
    parts = urlsplit(url)
    if parts.scheme.startswith("postgresql+"):
        return urlunsplit(parts._replace(scheme="postgresql"))
    return url


async def _configure(conn: Connection) -> None:
    # UTC in every session: timestamps go in and out as UTC regardless of server settings.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()


def create_pool(url: str, config: StoreConfig) -> AsyncConnectionPool[Connection]:
    """A pool bounded by db_pool_max_size; opened (without waiting) by `Database.open`."""
    return AsyncConnectionPool(
        libpq_url(url),
        min_size=config.db_pool_min_size,
        max_size=config.db_pool_max_size,
        timeout=config.db_acquire_timeout,
        # A connection broken by a database restart is noticed on checkout and replaced,
        # instead of failing the next transaction.
        check=AsyncConnectionPool.check_connection,
        configure=_configure,
        kwargs={"connect_timeout": 5, "application_name": "seriesflow-store"},
        open=False,
        name="seriesflow-store",
    )


class Database:
    """The pool plus the store's one way of running a transaction."""

    def __init__(self, pool: AsyncConnectionPool[Connection], url: str) -> None:
        self.pool = pool
        self.url = url
        self.up = True

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `fn(conn)` in one transaction, retrying lost deadlock/serialization races."""
        for attempt in range(1, RETRIES + 1):
            try:
                return await self._run_once(fn)
            except RetryableConflict:
                if attempt == RETRIES:
                    raise
                _log.info("transaction retried", extra={"fields": {"attempt": attempt}})
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    async def _run_once(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                return await fn(conn)
        except StoreError:
            raise
        except (psycopg.Error, OSError) as exc:
            # (PoolTimeout and PoolClosed are psycopg.OperationalError subclasses.)
            raise _translate_any(exc) from exc

    async def probe(self) -> bool:
        """True when PostgreSQL answers a trivial query on a fresh connection."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                libpq_url(self.url), connect_timeout=2, autocommit=True
            )
        except (psycopg.Error, OSError):
            return False
        try:
            await conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False
        finally:
            await conn.close()


def _translate_any(exc: BaseException) -> StoreError:
    if isinstance(exc, OSError):
        return DatabaseUnavailable(f"PostgreSQL is unavailable: {exc}")
    return translate(exc)
