"""Previews waiting for confirmation: what an action would do, and exactly which messages it chose.

A confirmed action acts on the messages its preview showed and no others: the
preview keeps their ids, and the action's selection is those ids *and* the
criteria that chose them (a message that stopped matching is left alone; one
that arrived since is not taken). Previews live in memory for a while, one
per token; confirming twice finds the second one gone.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import time
from typing import Any

TTL_SECONDS = 30 * 60
MAX_PREVIEWS = 200


@dataclasses.dataclass(slots=True)
class Preview:
    token: str
    kind: str  # replay | purge | reprocess | prune
    user: str
    fields: dict[str, str]  # the selection as typed (for links and the audit log)
    ids: frozenset[str]
    rows: list[dict[str, Any]]  # what the page shows, one per chosen message
    tally: dict[str, int]
    options: dict[str, Any]
    created: float


class Previews:
    def __init__(self) -> None:
        self._previews: collections.OrderedDict[str, Preview] = collections.OrderedDict()

    def add(self, kind: str, user: str, fields: dict[str, str], ids: frozenset[str], rows: list[dict[str, Any]],
            tally: dict[str, int], options: dict[str, Any] | None = None) -> Preview:
        preview = Preview(secrets.token_urlsafe(16), kind, user, fields, ids, rows, tally, options or {},
                          time.monotonic())
        self._previews[preview.token] = preview
        while len(self._previews) > MAX_PREVIEWS:
            self._previews.popitem(last=False)
        return preview

    def get(self, token: str, user: str) -> Preview | None:
        """The preview, if it is this user's and not expired."""
        preview = self._previews.get(token)
        if preview is None or preview.user != user or time.monotonic() - preview.created > TTL_SECONDS:
            return None
        return preview

    def take(self, token: str, user: str) -> Preview | None:
        """The preview, removed: a confirmation is used once."""
        preview = self.get(token, user)
        if preview is not None:
            del self._previews[token]
        return preview
