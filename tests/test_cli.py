"""The command line explains itself: every subcommand's --help has a description, the processes list their settings."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

import console
import gateway
import worker
from flowscribe_ingest.cli import build_parser
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
# Properties of Settings derived from a field.
DERIVED = {"worker_prefetch": "prefetch"}


Subcommand = tuple[tuple[str, ...], argparse.ArgumentParser]


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Subcommand]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append(((*path, name), child))
                found += subcommands(child, (*path, name))
    return found


@pytest.mark.parametrize(("path", "parser"), subcommands(build_parser()),
                         ids=lambda p: " ".join(p) if isinstance(p, tuple) else "")
def test_every_subcommand_describes_itself(path, parser):
    assert parser.description and len(parser.description) > 10, path


def settings_read_by(package: str) -> set[str]:
    names = set()
    for source in (ROOT / package).rglob("*.py"):
        names |= set(re.findall(r"settings\.([a-z_]+)\b", source.read_text()))
    return {DERIVED.get(name, name) for name in names} - {"public", "from_env"}


@pytest.mark.parametrize("process", [gateway, worker, console], ids=lambda p: p.__name__)
def test_a_process_lists_every_setting_its_code_reads(process):
    listed = set(process.SETTINGS_READ)
    assert listed <= set(FIELDS), listed - set(FIELDS)
    unlisted = settings_read_by(process.__name__) - listed
    assert not unlisted, f"add {sorted(unlisted)} to {process.__name__}.SETTINGS_READ (its --help lists them)"


@pytest.mark.parametrize("command", ["gateway", "worker", "console"])
def test_process_help_lists_its_settings_with_defaults(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    for name in {"gateway": gateway, "worker": worker, "console": console}[command].SETTINGS_READ:
        assert re.search(rf"{FIELDS[name].metadata['env']}  \(default: ", shown), name
