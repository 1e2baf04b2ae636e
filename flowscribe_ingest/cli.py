"""The `flowscribe-ingest` command: one subcommand per process kind."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from flowscribe_ingest import logs
from flowscribe_ingest.settings import Settings, SettingsError

log = logging.getLogger("flowscribe_ingest")


async def _migrate(settings: Settings) -> int:
    from schemas.migrations import migrate

    applied = await migrate(settings.database_url)
    log.info("database up to date", extra={"applied_now": applied})
    return 0


async def _gateway(settings: Settings) -> int:
    from gateway.server import serve

    await serve(settings)
    return 0


async def _worker(settings: Settings) -> int:
    from flowscribe_ingest.lifecycle import stop_on_signals
    from worker.consumer import run_worker

    stop = asyncio.Event()
    with stop_on_signals(stop):
        await run_worker(settings, stop)
    return 0


COMMANDS = {
    "migrate": (_migrate, "create the database if needed and apply pending migrations"),
    "gateway": (_gateway, "serve the callback endpoint until SIGTERM/SIGINT"),
    "worker": (_worker, "consume callbacks into PostgreSQL until SIGTERM/SIGINT"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowscribe-ingest",
        description="Land Flowscribe callbacks in PostgreSQL. Settings come from FLOWSCRIBE_* variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"flowscribe-ingest: bad setting: {e}", file=sys.stderr)
        return 2
    logs.configure(args.command, settings.log_format, settings.log_level)
    log.info("starting", extra={"command": args.command, "settings": settings.public()})
    run, _ = COMMANDS[args.command]
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
