"""Apply the SQL files in ``store/migrations/`` in order, each once.

Idempotent and safe to run from several processes at once (a one-shot job per
deploy, or every developer's `make run`): an advisory lock serialises runners,
and each file is applied in its own transaction together with its ledger row.

Safe under load: each transaction waits for a lock only briefly (store.lock_wait),
then rolls back and tries again, so workers' batches never queue for long behind a
migration waiting for a table some long transaction holds.
"""

from __future__ import annotations

import logging
import urllib.parse
from importlib import resources

import asyncpg

from store.analytics import repair_summaries, set_reporting_time_zone
from store.connection import connect
from store.lock_wait import BRIEF, LockWait, in_transaction

log = logging.getLogger("schemas.migrations")  # the name in the log schema, from before the move

# Any constant works; it only has to be the same for every runner.
_MIGRATION_LOCK = 0x466C6F77  # "Flow"


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, in the order they apply."""
    folder = resources.files("store") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def database_name(dsn: str) -> str:
    """The database a ``postgresql://`` URL names (libpq's default: the user name)."""
    parts = urllib.parse.urlsplit(dsn)
    name = urllib.parse.unquote(parts.path.lstrip("/"))
    return name or urllib.parse.unquote(parts.username or "postgres")


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing; True if created."""
    try:
        conn = await connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = database_name(dsn)
    conn = await connect(dsn, database="postgres")
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # created by a concurrent runner
    finally:
        await conn.close()
    log.info("database created", extra={"database": name})
    return True


async def migrate(dsn: str, reporting_time_zone: str = "", wait: LockWait = BRIEF,
                  files: list[tuple[str, str]] | None = None) -> list[str]:
    """Apply pending migrations (``files``: those of the package), then the reporting time zone if
    one is given, then put right the summaries that disagree with their analyses; return the
    versions applied now."""
    await ensure_database(dsn)
    conn = await connect(dsn)
    applied_now: list[str] = []
    try:
        # Waits for as long as another runner migrates: that one does the work.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS flowscribe;
            CREATE TABLE IF NOT EXISTS flowscribe.schema_migrations (
                version text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM flowscribe.schema_migrations")}
        for version, sql in migration_files() if files is None else files:
            if version in done:
                continue

            async def apply(version: str = version, sql: str = sql) -> None:
                await conn.execute(sql)
                await conn.execute("INSERT INTO flowscribe.schema_migrations (version) VALUES ($1)", version)

            await in_transaction(conn, f"migration {version}", apply, wait)
            applied_now.append(version)
            log.info("migration applied", extra={"version": version})
        if reporting_time_zone:
            zone = reporting_time_zone
            await in_transaction(conn, "reporting time zone", lambda: set_reporting_time_zone(conn, zone), wait)
        await repair_summaries(conn, wait=wait)
    finally:
        await conn.close()
    return applied_now
