"""The `flowscribe-ingest` command: one subcommand per process kind."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from runtime import logs
from ops import register
from runtime.settings import Settings, SettingsError
from ops import commands as ops_commands

log = logging.getLogger("flowscribe_ingest")


def _migrate(settings: Settings) -> int:
    from ops.connect import CANNOT_CONNECT, unreachable
    from store.migrations import migrate

    try:
        applied = asyncio.run(migrate(settings.database_url))
    except CANNOT_CONNECT as e:
        # Said as the ops commands say it: one line with what to check, no traceback.
        print(f"flowscribe-ingest: {unreachable('PostgreSQL', settings.database_url, e)}", file=sys.stderr)
        return 1
    log.info("database up to date", extra={"applied_now": applied})
    return 0


def _gateway(settings: Settings) -> int:
    if settings.gateway_processes > 1:
        # Forks the processes; none of them may inherit a running event loop.
        from gateway.processes import serve_in_processes

        return serve_in_processes(settings)
    from runtime.serving import listening_socket
    from gateway.server import check_startable, serve

    check_startable(settings)
    asyncio.run(serve(settings, listening_socket(settings.gateway_host, settings.gateway_port)))
    return 0


def _worker(settings: Settings) -> int:
    from runtime.gc_tuning import collecting_less_often
    from runtime.lifecycle import stop_on_signals
    from worker.consumer import run_worker

    async def work() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop), collecting_less_often():
            await run_worker(settings, stop)

    asyncio.run(work())
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    # Not a process: needs no settings, logs nothing (what it prints is a secret).
    token = sub.add_parser("token", help="make secrets", description="make secrets")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser(
        "new", help="print a new callback token (256 random bits)",
        description="Print a new callback token for FLOWSCRIBE_CALLBACK_TOKENS (256 random bits).",
    )
    new.add_argument("--signing-secret", action="store_true",
                     help="print a Standard Webhooks secret (whsec_...) for FLOWSCRIBE_SIGNING_SECRETS instead")
    # Operator tools (dlq ..., reprocess): short runs, defined and run by ops.commands.
    ops_commands.add_parsers(sub)
    # Not a process either: one call to Flowscribe; prints, logs nothing.
    register.add_parser(sub)
    return parser


def version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("flowscribe-ingest")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def new_secret(signing: bool = False) -> str:
    import base64
    import secrets

    if signing:
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token":
        print(new_secret(signing=args.signing_secret))
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        return _bad_setting(e)
    if hasattr(args, "ops"):
        return ops_commands.main(settings, args)
    if args.command == "register":
        return register.main(settings, args)
    logs.configure(args.command, settings.log_format, settings.log_level)
    log.info("starting", extra={"command": args.command, "settings": settings.public()})
    run, _ = COMMANDS[args.command]
    try:
        return run(settings)
    except SettingsError as e:  # a combination a process cannot start with (the gateway without a token)
        return _bad_setting(e)
    except KeyboardInterrupt:
        return 130


def _bad_setting(error: SettingsError) -> int:
    print(f"flowscribe-ingest: bad setting: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
