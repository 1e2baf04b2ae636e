"""The ops part of the command line: ``dlq list|show|replay|purge|export|import``, ``reprocess``, ``drift``, ``prune``,
``summaries check``.

``add_parsers`` hangs the subcommands on ``flowscribe-ingest``'s parser;
``execute`` runs one (tests await it; ``main`` wraps it in ``asyncio.run``).
Command modules are imported when a command runs, so the other subcommands
(gateway, worker) do not load them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ops.errors import OpsError, UsageError
from ops.selection import Selector, normalise_id, parse_when
from runtime import logs
from runtime.handlers import lazy
from runtime.settings import Settings
from store.outcomes import RECORDED

if TYPE_CHECKING:
    from ops.render import Console



def _when(text: str) -> datetime.datetime:
    try:
        return parse_when(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be > 0 and <= 1")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _selectors(parser: argparse.ArgumentParser, *, ids: bool) -> None:
    if ids:
        parser.add_argument("ids", nargs="*", metavar="ID", help="message ids (as `dlq list` shows them)")
    parser.add_argument("--reason", metavar="TEXT", help="reason contains TEXT (any case)")
    parser.add_argument("--since", type=_when, metavar="WHEN",
                        help="dead-lettered at or after WHEN: ISO 8601 (UTC if no offset) or an age: 30m, 2h, 7d")
    parser.add_argument("--until", type=_when, metavar="WHEN", help="dead-lettered before WHEN")
    parser.add_argument("--limit", type=_positive(int), metavar="N", help="at most N messages (default: no limit)")


def _action(actions: argparse._SubParsersAction[Any], name: str, help_text: str) -> argparse.ArgumentParser:
    """A dlq action whose --help begins with its one-line help, as a sentence."""
    parser: argparse.ArgumentParser = actions.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    return parser


def _command(parser: argparse.ArgumentParser, handler: str, *, changes: bool) -> None:
    """``handler`` (``"ops.module:function"``) runs the command, under ``main``."""
    parser.set_defaults(run=lazy("ops.commands:main"), ops_command=lazy(handler), changes_queue=changes)


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``dlq``, ``reprocess``, ``drift``, ``prune`` and ``summaries`` to ``flowscribe-ingest``'s subcommands."""
    dlq = sub.add_parser(
        "dlq", help="inspect, replay, purge, export and import dead letters",
        description="The dead-letter queue: reading never changes it; replay, purge and export --remove"
                    " act only on the messages chosen by IDs, --reason, --since/--until or --all.",
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    p = _action(actions, "list", "a table of dead letters (changes nothing)")
    _selectors(p, ids=False)
    p.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    _command(p, "ops.inspection:list_command", changes=False)

    p = _action(actions, "show", "one dead letter: why, properties, headers, body")
    p.add_argument("id", metavar="ID")
    p.add_argument("--raw", action="store_true", help="write the exact body bytes to stdout, nothing else")
    p.add_argument("--json", action="store_true", help="the message as one JSON object (the export format)")
    _command(p, "ops.inspection:show_command", changes=False)

    p = _action(actions, "replay", "publish dead letters to the callbacks queue again")
    _selectors(p, ids=True)
    p.add_argument("--all", action="store_true", dest="every", help="every dead letter")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing; say whether each decodes now and what it would do in the database")
    p.add_argument("--force", action="store_true", help="replay also those that still fail to decode")
    p.add_argument("--rate", type=_positive(float), metavar="N",
                   help="at most N messages per second (default: as fast as the broker confirms)")
    _command(p, "ops.replay:replay_command", changes=True)

    p = _action(actions, "purge", "delete dead letters for good (asks first)")
    _selectors(p, ids=True)
    p.add_argument("--all", action="store_true", dest="every", help="every dead letter")
    p.add_argument("--yes", action="store_true", help="do not ask (required without a terminal)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; change nothing")
    _command(p, "ops.purge:purge_command", changes=True)

    p = _action(actions, "export", "write dead letters to an NDJSON file (they stay unless --remove)")
    p.add_argument("file", metavar="FILE", help="a new file, or - for stdout")
    _selectors(p, ids=True)
    p.add_argument("--remove", action="store_true",
                   help="remove the exported messages from the queue once the file is written and synced")
    _command(p, "ops.transfer:export_command", changes=False)

    p = _action(actions, "import", "publish the messages of an export file into the dead-letter queue")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--rate", type=_positive(float), metavar="N",
                   help="at most N messages per second (default: as fast as the broker confirms)")
    _command(p, "ops.transfer:import_command", changes=False)

    p = sub.add_parser(
        "reprocess", help="run stored callbacks through the worker again (e.g. after a decoder fix)",
        description="Re-derive the rows of archived callbacks from their exact stored bytes. Versions and"
                    " duplicates are respected; no ledger row is added.",
    )
    p.add_argument("--since", type=_when, metavar="WHEN", help="received at or after WHEN (ISO 8601 or 30m, 2h, 7d)")
    p.add_argument("--until", type=_when, metavar="WHEN", help="received before WHEN")
    p.add_argument("--id", type=_uuid, action="append", metavar="UUID", help="this callback (message id; repeatable)")
    p.add_argument("--analysis-id", type=_uuid, action="append", metavar="UUID", help="this analysis (repeatable)")
    p.add_argument("--outcome", choices=RECORDED, action="append", help="callbacks with this outcome (repeatable)")
    p.add_argument("--all", action="store_true", dest="every", help="every stored callback")
    p.add_argument("--limit", type=_positive(int), metavar="N",
                   help="at most N callbacks, oldest first (default: no limit)")
    p.add_argument("--dry-run", action="store_true", help="publish nothing; predict each outcome")
    p.add_argument("--rate", type=_positive(float), metavar="N",
                   help="at most N callbacks per second (default: as fast as the broker confirms)")
    _command(p, "ops.reprocess:reprocess_command", changes=True)

    p = sub.add_parser(
        "drift", help="fields and objects callbacks carry that the payload Structs do not know",
        description="Schema drift seen by the workers in a sample of the callbacks (FLOWSCRIBE_DRIFT_SAMPLE_RATE):"
                    " object, field, first and last seen, sampled callbacks, an example callback id.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    _command(p, "ops.drift:drift_command", changes=False)

    p = sub.add_parser(
        "prune", help="remove archived bodies (and with --ledger, ledger rows) older than an age",
        description="Remove the archived bodies of callbacks received before --older-than, in small"
                    " transactions that never wait for a worker. Pruned callbacks can no longer be reprocessed;"
                    " their digests stay, so duplicates are still recognised.",
    )
    p.add_argument("--older-than", type=_when, required=True, metavar="AGE",
                   help="received before this: an age (90d, 12h) or an ISO 8601 timestamp")
    p.add_argument("--ledger", action="store_true",
                   help="also delete old ledger rows (not those of stored versions and jobs, whose bodies go)")
    p.add_argument("--dry-run", action="store_true", help="change nothing; say what and how many bytes")
    p.add_argument("--batch-size", type=_positive(int), default=1000, metavar="N",
                   help="rows per transaction (default: 1000)")
    p.add_argument("--duty-cycle", type=_fraction, default=0.25, metavar="F",
                   help="share of the time spent in batches: after each it pauses to leave the database to the"
                        " workers (default: 0.25; 1: no pause)")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    _command(p, "ops.prune:prune_command", changes=False)

    summaries = sub.add_parser(
        "summaries", help="check the analytics summaries against the stored analyses",
        description="The per-conversation summaries the analytics views read (README: Analytics views).",
    )
    actions = summaries.add_subparsers(dest="summaries_command", required=True, metavar="ACTION")
    p = _action(actions, "check", "say whether every summary agrees with its stored analysis (changes nothing;"
                                  " exit status 1 if one does not, and `migrate` rewrites it)")
    p.add_argument("--limit", type=_positive(int), default=20, metavar="N",
                   help="list at most N of those that disagree (default: 20)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    _command(p, "ops.summaries:check_command", changes=False)


def _prepare(args: argparse.Namespace) -> None:
    """Checks argparse cannot express, and the Selector the dlq commands share."""
    if args.command in ("drift", "prune", "summaries"):
        return
    if args.command == "reprocess":
        if not (args.since or args.until or args.id or args.analysis_id or args.outcome or args.every):
            raise UsageError("say which callbacks: --since/--until, --id, --analysis-id, --outcome, or --all")
        return
    ids = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else [])
    args.selector = Selector(
        ids=frozenset(normalise_id(i) for i in ids),
        reason=getattr(args, "reason", None),
        since=getattr(args, "since", None),
        until=getattr(args, "until", None),
        every=getattr(args, "every", False),
        limit=getattr(args, "limit", None),
    )
    if args.changes_queue and not args.selector.narrows:
        raise UsageError(f"say which dead letters to {args.dlq_command}: IDs, --reason, --since/--until, or --all")


async def execute(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    """Run the ops command ``args`` names; the exit status (problems are told on ``console.err``)."""
    try:
        _prepare(args)
        return int(await args.ops_command(settings, args, console))
    except OpsError as e:
        console.note(f"flowscribe-ingest: {e}")
        return e.exit_code


def main(settings: Settings, args: argparse.Namespace) -> int:
    # Info logs would interleave with tables and progress: warnings and worse, unless debugging.
    logs.configure("ops", settings.log_format, "warning" if settings.log_level == "info" else settings.log_level)
    # A broker that cannot be reached is reported once, in words, by ops.connect.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    from ops.render import Console

    try:
        return asyncio.run(execute(settings, args, Console.standard()))
    except KeyboardInterrupt:
        # Whatever was not acked is back in its queue.
        return 130
    except BrokenPipeError:
        # `dlq list | head`: the reader left; so do we, quietly (nothing was acked for it).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
