"""The `flowscribe-ingest` command: one subcommand per process kind, and the operator's tools.

One dispatch mechanism: every subcommand names its handler with
``set_defaults(run=lazy("package.module:function"))`` (runtime.handlers), imported
only when that subcommand runs. A handler takes ``(settings, args)`` and returns
the exit status; one that needs no settings (``token``) says so with
``needs_settings=False`` and takes ``(args)``.
"""

from __future__ import annotations

import argparse
import sys

from ops import commands as ops_commands
from ops import register
from runtime.handlers import lazy
from runtime.settings import Settings, SettingsError

# The long-running processes (deploy/ runs these): name -> (handler, what it does).
COMMANDS = {
    "migrate": ("flowscribe_ingest.commands:migrate", "create the database if needed and apply pending migrations"),
    "gateway": ("flowscribe_ingest.commands:gateway", "serve the callback endpoint until SIGTERM/SIGINT"),
    "worker": ("flowscribe_ingest.commands:worker", "consume callbacks into PostgreSQL until SIGTERM/SIGINT"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowscribe-ingest",
        description="Land Flowscribe callbacks in PostgreSQL. Settings come from FLOWSCRIBE_* variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.set_defaults(needs_settings=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text).set_defaults(run=lazy(handler))
    # Not a process: needs no settings, logs nothing (what it prints is a secret).
    token = sub.add_parser("token", help="make secrets", description="make secrets")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser(
        "new", help="print a new callback token (256 random bits)",
        description="Print a new callback token for FLOWSCRIBE_CALLBACK_TOKENS (256 random bits).",
    )
    new.add_argument("--signing-secret", action="store_true",
                     help="print a Standard Webhooks secret (whsec_...) for FLOWSCRIBE_SIGNING_SECRETS instead")
    new.set_defaults(run=lazy("flowscribe_ingest.commands:token"), needs_settings=False)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.needs_settings:
        return int(args.run(args))
    try:
        settings = Settings.from_env()
        return int(args.run(settings, args))
    except SettingsError as e:  # also a combination a process cannot start with (the gateway without a token)
        print(f"flowscribe-ingest: bad setting: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
