"""The `flowscribe-ingest` command: one subcommand per process kind, and the operator's tools.

One dispatch mechanism: every subcommand names its handler with
``set_defaults(run=lazy("package.module:function"))`` (runtime.handlers), imported
only when that subcommand runs. A handler takes ``(settings, args)`` and returns
the exit status; one that needs no settings (``token``) says so with
``needs_settings=False`` and takes ``(args)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from typing import Any

import console
import gateway
import worker
from ops import commands as ops_commands
from ops import register
from runtime import tracing
from runtime.handlers import lazy
from runtime.settings import Secrets, Settings, SettingsError

# The long-running processes (deploy/ runs these): name -> (handler, what it does, the settings it reads).
COMMANDS = {
    "migrate": ("flowscribe_ingest.commands:migrate", "create the database if needed and apply pending migrations",
                ("database_url", "reporting_time_zone", "log_format", "log_level")),
    "gateway": ("flowscribe_ingest.commands:gateway", "serve the callback endpoint until SIGTERM/SIGINT",
                gateway.SETTINGS_READ),
    "worker": ("flowscribe_ingest.commands:worker", "consume callbacks into PostgreSQL until SIGTERM/SIGINT",
               worker.SETTINGS_READ),
    "console": ("flowscribe_ingest.commands:console",
                "serve the operator's console (a web UI, default 127.0.0.1:8090) until SIGTERM/SIGINT",
                console.SETTINGS_READ),
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless it has none to show (None, False) or its help says it already;
    wraps descriptions, but keeps text laid out in lines (the settings list) as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not text:
            return action.help
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: the same help format throughout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def settings_help(names: tuple[str, ...]) -> str:
    """The settings a process reads, as its --help ends: variable, default, what it does."""
    fields = {field.name: field for field in dataclasses.fields(Settings)}
    lines = ["settings read (environment variables; README: Settings):"]
    for name in names:
        field = fields[name]
        default = field.default
        shown = "(none)" if default in ((), "") or isinstance(default, Secrets) else default
        lines.append(f"  {field.metadata['env']}  (default: {shown})")
        lines += textwrap.wrap(field.metadata["doc"].replace("`", ""), 72, initial_indent=" " * 6,
                               subsequent_indent=" " * 6)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flowscribe-ingest",
        description="Land Flowscribe callbacks in PostgreSQL. Settings come from FLOWSCRIBE_* variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.set_defaults(needs_settings=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, help_text, reads) in COMMANDS.items():
        process = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                                 epilog=settings_help(reads))
        process.set_defaults(run=lazy(handler))
    # Not a process: needs no settings, logs nothing (what it prints is a secret).
    token = sub.add_parser("token", help="make secrets",
                           description="Make secrets: `token new` prints a callback token or a signing secret.")
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
        # Traces, if OTEL_EXPORTER_OTLP_ENDPOINT asks for them: flushed when the command ends.
        with tracing.installed(f"flowscribe-ingest-{args.command}"):
            return int(args.run(settings, args))
    except SettingsError as e:  # also a combination a process cannot start with (the gateway without a token)
        print(f"flowscribe-ingest: bad setting: {e}", file=sys.stderr)
        return 2
    except tracing.TracingUnavailable as e:
        print(f"flowscribe-ingest: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
