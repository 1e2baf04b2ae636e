"""Apply the SQL files in ``store/migrations/`` in order, each once.

Idempotent and safe to run from several processes at once (a one-shot job per
deploy, or every developer's `make run`): an advisory lock serialises runners,
and each file is applied in its own transaction together with its ledger row.
"""

from __future__ import annotations

import logging
import urllib.parse
from importlib import resources

import asyncpg

from store.analytics import repair_summaries, set_reporting_time_zone
from store.connection import connect

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


async def migrate(dsn: str, reporting_time_zone: str = "") -> list[str]:
    """Apply pending migrations, then the reporting time zone if one is given; return the versions applied now."""
    await ensure_database(dsn)
    conn = await connect(dsn)
    applied_now: list[str] = []
    try:
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
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO flowscribe.schema_migrations (version) VALUES ($1)", version
                )
            applied_now.append(version)
            log.info("migration applied", extra={"version": version})
        if reporting_time_zone:
            await set_reporting_time_zone(conn, reporting_time_zone)
        await repair_summaries(conn)
    finally:
        await conn.close()
    return applied_now
