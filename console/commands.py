"""The console's actions as the command line's: each builds the arguments of one ops command and runs it.

No rule is written here: replay, purge, export and reprocess are
``ops.replay.replay_command``, ``ops.purge.purge_command``,
``ops.transfer.export_command``, ``ops.reprocess.reprocess_command`` and
``ops.prune.prune_command``, called as ``flowscribe-ingest dlq
replay|purge|export``, ``reprocess`` and ``prune`` call them; their previews are
the ``--dry-run`` predictions (``ops.replay.preview``, ``ops.reprocess.preview``,
``prune --dry-run --json``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from console.jobs import Command
from ops import prune, purge, replay, reprocess, transfer
from ops.render import Console
from ops.selection import Selector
from runtime.settings import Settings
from store.connection import Connection


def replay_command(settings: Settings, selector: Selector, *, force: bool) -> Command:
    args = argparse.Namespace(selector=selector, dry_run=False, force=force, rate=None)

    async def run(console: Console) -> int:
        return await replay.replay_command(settings, args, console)

    return run


def purge_command(settings: Settings, selector: Selector) -> Command:
    # --yes: the operator confirmed in the browser, after seeing exactly these messages.
    args = argparse.Namespace(selector=selector, yes=True, dry_run=False)

    async def run(console: Console) -> int:
        return await purge.purge_command(settings, args, console)

    return run


def _reprocess_args(ids: Iterable[str]) -> argparse.Namespace:
    return argparse.Namespace(id=[uuid.UUID(i) for i in ids], since=None, until=None, analysis_id=None,
                              outcome=None, every=False, limit=None, dry_run=False, rate=None)


def reprocess_command(settings: Settings, ids: Iterable[str]) -> Command:
    args = _reprocess_args(ids)

    async def run(console: Console) -> int:
        return await reprocess.reprocess_command(settings, args, console)

    return run


async def reprocess_preview(conn: Connection, ids: Iterable[str]) -> list[dict[str, object]]:
    return await reprocess.preview(conn, _reprocess_args(ids))


async def export(settings: Settings, selector: Selector, path: Path, console: Console) -> int:
    """``dlq export FILE`` with this selection: the file is written, synced, and only then renamed."""
    args = argparse.Namespace(file=str(path), selector=selector, remove=False)
    return await transfer.export_command(settings, args, console)


def _prune_args(older_than: datetime.datetime, *, ledger: bool, dry_run: bool) -> argparse.Namespace:
    # The command line's defaults: batches of 1,000, at most a quarter of the time (workers come first).
    return argparse.Namespace(older_than=older_than, ledger=ledger, dry_run=dry_run, json=dry_run,
                              batch_size=1000, duty_cycle=0.25)


async def prune_preview(settings: Settings, older_than: datetime.datetime, *, ledger: bool) -> dict[str, Any]:
    """``prune --dry-run --json``'s summary: how many bodies (and ledger rows), how many bytes, which outcomes."""
    out = io.StringIO()
    await prune.prune_command(settings, _prune_args(older_than, ledger=ledger, dry_run=True),
                              Console(out, io.StringIO(), io.BytesIO(), interactive=False, live=False))
    summary: dict[str, Any] = json.loads(out.getvalue().strip().splitlines()[-1])
    return summary


def prune_command(settings: Settings, older_than: datetime.datetime, *, ledger: bool) -> Command:
    args = _prune_args(older_than, ledger=ledger, dry_run=False)

    async def run(console: Console) -> int:
        # Never set: the console's shutdown cancels the job; the batch in flight is one transaction.
        return await prune.prune_command(settings, args, console, stop=asyncio.Event())

    return run


replay_preview = replay.preview
