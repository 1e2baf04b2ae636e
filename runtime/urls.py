"""Service URLs as the settings give them: lists of broker URLs, multi-host database URLs, redaction.

``FLOWSCRIBE_AMQP_URL`` may name several broker nodes, comma-separated, each a
whole ``amqp://`` URL (aio-pika connects to one URL at a time; the connect loop
in ``runtime.amqp`` picks among them). ``FLOWSCRIBE_DATABASE_URL`` is
one URL, which may list several hosts the way libpq does
(``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write``):
asyncpg walks those itself. So a comma starts a new URL only where a scheme
follows it; any other comma belongs to the URL it is in.

Every URL is shown only through ``redact_urls``: passwords in the userinfo and
in the query string (``?password=``) are hidden, URL by URL.
"""

from __future__ import annotations

import re
import urllib.parse

AMQP_SCHEMES = ("amqp", "amqps")
DATABASE_SCHEMES = ("postgresql", "postgres")

# Query parameters that carry a secret (libpq's and asyncpg's names).
_SECRET_PARAMETERS = re.compile(r"(?i)((?:^|[?&;])(?:password|sslpassword)=)[^&;#]*")
_NEXT_URL = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
HIDDEN = "***"


def split_urls(raw: str) -> list[str]:
    """``"amqp://a/v, amqp://b/v"`` -> ``["amqp://a/v", "amqp://b/v"]`` (commas inside a URL stay)."""
    return _NEXT_URL.split(raw.strip())


def redact_url(url: str) -> str:
    """One URL with its passwords hidden: ``amqp://guest:***@host/``, ``...?password=***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAMETERS.sub(rf"\g<1>{HIDDEN}", url)
    # The userinfo ends at the last "@" before the query: a password may hold "@" or "/"
    # unencoded, a query value (a connection name) may hold "@".
    before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = before_query.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{HIDDEN}{rest[at:]}"
    head, question, query = rest.partition("?")
    if question:
        rest = head + question + _SECRET_PARAMETERS.sub(rf"\g<1>{HIDDEN}", "?" + query)[1:]
    return f"{scheme}{sep}{rest}"


def redact_urls(raw: str) -> str:
    """Every URL of a comma-separated list redacted (see ``redact_url``)."""
    return ",".join(redact_url(url) for url in split_urls(raw))


def _hosts(netloc: str) -> list[str]:
    """The ``host[:port]`` entries of a URL's authority, which may list several (libpq form)."""
    hostlist = netloc.rpartition("@")[2]
    return hostlist.split(",") if hostlist else []


def _check_host(entry: str, url: str, *, several_allowed: bool) -> None:
    host, port = entry, ""
    if entry.startswith("["):  # [IPv6]:port
        host, _, port = entry[1:].partition("]")
        port = port.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    if not host:
        hint = "" if several_allowed else "; several brokers are several whole URLs: amqp://a/v,amqp://b/v"
        raise ValueError(f"{redact_url(url)} names no host{hint}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{redact_url(url)} has a bad port {port!r}")


def amqp_urls(raw: str) -> tuple[str, ...]:
    """The broker URLs of ``FLOWSCRIBE_AMQP_URL``; ValueError for anything that is not a list of them."""
    urls = split_urls(raw)
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in AMQP_SCHEMES:
            raise ValueError(
                f"{redact_url(url)!r} is not an amqp:// or amqps:// URL"
                " (several brokers: whole URLs separated by commas)"
            )
        if "," in parts.path:
            raise ValueError(
                f"{redact_url(url)}: a comma in the vhost? Several brokers are several whole URLs"
                " (amqp://a:5672/v,amqp://b:5672/v); a vhost with a comma is written %2C"
            )
        hosts = _hosts(parts.netloc)
        if len(hosts) != 1:
            raise ValueError(
                f"{redact_url(url)} names {len(hosts)} hosts; several brokers are several whole URLs:"
                " amqp://a:5672/v,amqp://b:5672/v"
            )
        _check_host(hosts[0], url, several_allowed=False)
    return tuple(urls)


def database_url(raw: str) -> str:
    """``FLOWSCRIBE_DATABASE_URL`` checked; with several hosts, only a primary will do.

    libpq's (and asyncpg's) default ``target_session_attrs`` is ``any``: with
    several hosts it would as happily settle on a read-only standby. A worker
    must write, so a multi-host URL without it gets ``read-write``.
    """
    url = raw.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DATABASE_SCHEMES:
        raise ValueError(f"{redact_url(url)!r} is not a postgresql:// URL")
    hosts = _hosts(parts.netloc)
    for entry in hosts:
        _check_host(entry, url, several_allowed=True)
    query = urllib.parse.parse_qs(parts.query)
    if len(hosts) > 1 and "target_session_attrs" not in query:
        url += ("&" if parts.query else "?") + "target_session_attrs=read-write"
    return url
