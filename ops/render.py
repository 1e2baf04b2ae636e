"""Talking to the operator: tables and JSON lines on stdout, progress and questions on stderr.

Commands write through a ``Console`` they are given (the terminal's, or the
test's buffers), so stdout carries only results a script may parse, and a
command's output does not depend on global state.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

import msgspec
from lxml import etree

from ops.errors import UsageError


@dataclasses.dataclass
class Console:
    out: IO[str]
    err: IO[str]
    raw: IO[bytes]  # stdout as bytes, for `dlq show --raw`
    interactive: bool  # stdin is a terminal: we may ask a question
    live: bool  # stderr is a terminal: progress is one line updated in place
    read_answer: Callable[[], str] = sys.stdin.readline

    @classmethod
    def standard(cls) -> Console:
        return cls(sys.stdout, sys.stderr, sys.stdout.buffer, sys.stdin.isatty(), sys.stderr.isatty())

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def confirm(console: Console, question: str, *, refusal: str) -> bool:
    """Ask ``question`` (yes/no) on the terminal; without one, refuse (exit status 2) with ``refusal``."""
    if not console.interactive:
        raise UsageError(f"{refusal}: no terminal to ask for confirmation; pass --yes")
    console.err.write(f"{question} [y/N] ")
    console.err.flush()
    return console.read_answer().strip().lower() in ("y", "yes")


def when(value: datetime.datetime | None) -> str:
    """A timestamp as operators read it: UTC, to the second."""
    if value is None:
        return ""
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(console: Console, columns: Sequence[tuple[str, str]], rows: Iterable[Mapping[str, Any]]) -> None:
    """Rows as aligned columns: ``columns`` is (key, heading) pairs."""
    cells = [[("" if row.get(key) is None else str(row[key])) for key, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [max(len(c) for c in column) for column in zip(headings, *cells, strict=False)]
    for line in (headings, *cells):
        console.say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def json_line(console: Console, obj: Mapping[str, Any]) -> None:
    console.say(json.dumps(obj, default=_jsonable, ensure_ascii=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


class Progress:
    """How far a long command has got, on stderr: one line updated in place on a terminal,
    else a line every tenth of the way (and at the end), so a log stays short."""

    def __init__(self, console: Console, verb: str, total: int) -> None:
        self._console = console
        self._verb = verb
        self._total = total
        self._every = max(1, total // 10)
        self._logged = 0  # tenths of the way logged so far (counts may jump: a batch at a time)
        self._last_draw = 0.0
        self._shown = False

    def update(self, done: int, **counts: int) -> None:
        text = f"{self._verb}: {done}/{self._total}" + "".join(f", {k} {v}" for k, v in counts.items())
        if self._console.live:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or done == self._total:
                self._console.err.write("\r" + text + "\x1b[K")
                self._console.err.flush()
                self._last_draw, self._shown = now, True
        elif done // self._every > self._logged or done == self._total:
            self._logged = done // self._every
            self._console.note(text)

    def close(self) -> None:
        if self._shown:
            self._console.err.write("\n")
            self._console.err.flush()


def pretty_body(body: bytes, content_type: str | None) -> str:
    """The body for reading: indented JSON or XML when it parses, else the text (or a note if binary).

    A dead letter may be hostile (that can be why it is here), so XML is parsed
    with entities, DTDs and the network off, and nothing is ever evaluated.
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    if "json" in media:
        try:
            # Indents the bytes as they are (escapes, key order and duplicates as received), without
            # building Python objects: 250 KB in ~1 ms, a tenth of json.loads + json.dumps.
            return msgspec.json.format(body, indent=2).decode("utf-8")
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass
    elif "xml" in media:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False, remove_blank_text=True)
        try:
            return etree.tostring(etree.fromstring(body, parser), pretty_print=True, encoding="unicode")
        except (etree.LxmlError, ValueError):
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(body)} bytes, not UTF-8 text: use --raw for the exact bytes>"
