"""Where a login may send the browser next: a path (and query) on this console, decided on the URL as a
browser would resolve it, never on the raw string.

A browser (the WHATWG URL standard) removes every tab, newline and carriage
return from a URL, trims leading and trailing control characters and spaces,
reads a backslash as a slash (http and https), and treats ``%2e`` like a dot
in a path segment. So ``/\\t/evil.example/`` and ``/\\\\evil.example`` are
``//evil.example``: another site. ``local_target`` does the same to the
value, resolves the dot segments, and accepts only what is then a path on this
origin; it returns that path as it resolved, with everything outside printable
ASCII percent-encoded, so the ``Location`` header says exactly what was decided
and the browser has nothing left to reinterpret.
"""

from __future__ import annotations

import re
import urllib.parse

HOME = "/"

# What the URL parser removes before anything else, and what it trims at both ends.
_REMOVED = re.compile(r"[\t\n\r]")
_TRIMMED = "".join(chr(c) for c in range(0x21))
_SINGLE_DOT = {".", "%2e"}
_DOUBLE_DOT = {"..", ".%2e", "%2e.", "%2e%2e"}
# Characters a path or query may carry as they are; anything else (controls, spaces, non-ASCII) is encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def _resolved_path(path: str) -> str:
    """The path with its dot segments removed, as the URL parser does (RFC 3986 5.2.4, WHATWG's %2e)."""
    out: list[str] = []
    segments = path.split("/")[1:]  # path starts with "/"
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        lowered = segment.lower()
        if lowered in _DOUBLE_DOT:
            if out:
                out.pop()
            if last:
                out.append("")
        elif lowered in _SINGLE_DOT:
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def local_target(value: object) -> str:
    """``value`` as a path (and query) on this origin, or HOME if a browser would resolve it anywhere else."""
    if not isinstance(value, str):
        return HOME
    text = _REMOVED.sub("", value.strip(_TRIMMED)).replace("\\", "/")
    if not text.startswith("/") or text.startswith("//"):
        return HOME  # relative, another scheme, or scheme-relative (another host)
    text = text.partition("#")[0]  # a fragment never reaches the server; the browser keeps its own
    path, _, query = text.partition("?")
    resolved = _resolved_path(path)
    if resolved.startswith("//"):
        return HOME  # e.g. /.//evil.example: a path here, but one that reads as another host if echoed
    target = urllib.parse.quote(resolved, safe=_PATH_SAFE)
    if query:
        target += "?" + urllib.parse.quote(query, safe=_QUERY_SAFE)
    return target
