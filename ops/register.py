"""`flowscribe-ingest register`: give Flowscribe our callback URL, and prove the route works.

Flowscribe's API (InitializeWebHook): ``POST {api base}/api/ConversationAnalysis/
InitializeWebHook?callbackURL={url}``, no body. The callback URL travels as one
query parameter, so every reserved character in it is percent-encoded (a
``?`` or ``&`` in it must not become part of Flowscribe's own query).

Transient failures (no connection, a timeout, 5xx, 429) are retried with
growing pauses (``Retry-After`` when the server gives one), a bounded number of
times; any other answer is final. ``--check`` first posts the vendor's own
sample to the callback URL, through whatever public route leads to our gateway,
and registers only if the gateway answered 202.

Nothing secret is printed: not the API key, and not the callback token (the
last segment of the callback URL), wherever either turns up in an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.utils
import importlib.resources
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

import aiohttp
import yarl

from ops.errors import UsageError
from runtime.handlers import lazy
from runtime.redaction import SecretsRedactor
from runtime.settings import Settings

INITIALIZE_PATH = "api/ConversationAnalysis/InitializeWebHook"
DEFAULT_API_KEY_HEADER = "X-API-Key"
DEFAULT_ATTEMPTS = 5
# What we show of an answer's body: enough for an error message, not a flood.
SHOWN_BODY_CHARS = 2000


def vendor_sample() -> bytes:
    """The JSON sample from Flowscribe's API page, shipped inside the package."""
    return (importlib.resources.files("schemas") / "samples" / "vendor-sample.json").read_bytes()


class RegistrationFailed(Exception):
    """Flowscribe (or, with --check, our gateway) did not answer as hoped (exit status 1)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = DEFAULT_ATTEMPTS
    first_delay: float = 1.0  # doubled after each transient failure
    max_delay: float = 30.0  # also caps a server's Retry-After

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        told = _seconds(retry_after)
        wanted = told if told is not None else self.first_delay * 2 ** (attempt - 1)
        return min(wanted, self.max_delay)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    body: str


Sleep = Callable[[float], Awaitable[None]]


def _seconds(retry_after: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not retry_after:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_url(value: str, what: str) -> yarl.URL:
    try:
        url = yarl.URL(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{what} {value!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"{what} must be an absolute http:// or https:// URL")
    return url


def initialize_url(api_base: str, callback_url: str) -> yarl.URL:
    """Flowscribe's InitializeWebHook URL for ``callback_url``, encoded exactly once."""
    base = _http_url(api_base, "--api-base")
    _http_url(callback_url, "--callback-url")
    query = "callbackURL=" + urllib.parse.quote(callback_url, safe="")
    # encoded=True: yarl must not re-quote (or unquote) what we encoded ourselves.
    return yarl.URL(f"{str(base).rstrip('/')}/{INITIALIZE_PATH}?{query}", encoded=True)


def redactor(callback_url: str, api_key: str | None) -> SecretsRedactor:
    """Hides the API key and the callback token (the URL's last path segment) in text we print."""
    token = urllib.parse.urlsplit(callback_url).path.rstrip("/").rpartition("/")[2]
    secrets = {s for s in (token, api_key) if s}
    # Raw, percent-encoded (as in the query we sent) and path-decoded forms alike.
    forms = (form for s in secrets for form in (s, urllib.parse.quote(s, safe=""), urllib.parse.unquote(s)))
    return SecretsRedactor(forms)


async def post_with_retries(
    session: aiohttp.ClientSession,
    url: str | yarl.URL,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    retry: Retry = Retry(),
    say: Callable[[str], None] = lambda line: None,
    sleep: Sleep = asyncio.sleep,
) -> Answer:
    """POST until an answer that is not transient; RegistrationFailed unless it is 2xx."""
    last = "no attempt made"
    for attempt in range(1, retry.attempts + 1):
        retry_after = None
        try:
            async with session.post(url, headers=headers, data=data) as response:
                answer = Answer(response.status, response.reason or "", await response.text(errors="replace"))
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            if 200 <= answer.status < 300:
                return answer
            last = f"{answer.status} {answer.reason}: {answer.body[:SHOWN_BODY_CHARS]}".rstrip(": ")
            if answer.status < 500 and answer.status != 429:
                raise RegistrationFailed(f"{what}: {last}")
        if attempt < retry.attempts:
            pause = retry.delay(attempt, retry_after)
            say(f"{what}: attempt {attempt} of {retry.attempts} failed ({last}); retrying in {pause:g} s")
            await sleep(pause)
    raise RegistrationFailed(f"{what}: gave up after {retry.attempts} attempts; last: {last}")


async def check_route(
    session: aiohttp.ClientSession,
    callback_url: str,
    *,
    signing_keys: tuple[bytes, ...] = (),
    retry: Retry = Retry(),
    say: Callable[[str], None] = lambda line: None,
) -> Answer:
    """Post the vendor's sample to ``callback_url``; RegistrationFailed unless the gateway answers 202."""
    body = vendor_sample()
    headers = {"Content-Type": "application/json"}
    if signing_keys:
        # The gateway requires signed callbacks: sign as Flowscribe would.
        from schemas.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

        msg_id, now = f"msg_{uuid.uuid4().hex}", int(time.time())
        headers |= {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(now),
                    SIGNATURE_HEADER: sign(signing_keys[0], msg_id, now, body)}
    answer = await post_with_retries(
        session, callback_url, what="check", headers=headers, data=body, retry=retry, say=say
    )
    if answer.status != 202:
        raise RegistrationFailed(f"check: expected 202 from our gateway, got {answer.status} {answer.reason}"
                                 " (is something else answering on that URL?)")
    return answer


async def register(
    api_base: str,
    callback_url: str,
    *,
    api_key: str | None,
    api_key_header: str = DEFAULT_API_KEY_HEADER,
    check: bool = False,
    signing_keys: tuple[bytes, ...] = (),
    retry: Retry = Retry(),
    timeout: float = 30.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Register ``callback_url`` with Flowscribe (after --check, if asked); the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    redact = redactor(callback_url, api_key)

    def say(line: str) -> None:
        print(redact(line), file=err)

    try:
        url = initialize_url(api_base, callback_url)
    except UsageError as e:
        print(f"flowscribe-ingest register: {e}", file=err)
        return 2
    headers = {api_key_header: api_key} if api_key else {}
    if not api_key:
        say("note: FLOWSCRIBE_API_KEY is not set; calling Flowscribe without an API key")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            if check:
                answer = await check_route(session, callback_url, signing_keys=signing_keys, retry=retry, say=say)
                print(redact(f"check: {callback_url} answered {answer.status} {answer.body.strip()}"
                             " - the route to the gateway works (the vendor's sample will be stored"
                             " like any callback)"), file=out)
            answer = await post_with_retries(
                session, url, what="InitializeWebHook", headers=headers, retry=retry, say=say
            )
    except RegistrationFailed as e:
        say(f"flowscribe-ingest register: {e}")
        return 1
    body = answer.body.strip()[:SHOWN_BODY_CHARS] or "(empty body)"
    print(redact(f"Flowscribe answered {answer.status} {answer.reason}: {body}"), file=out)
    print(redact(f"registered {callback_url}"), file=out)
    return 0


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    description = (
        "Register the callback URL with Flowscribe (POST api/ConversationAnalysis/InitializeWebHook)."
        " The API key comes from FLOWSCRIBE_API_KEY. Exit status: 0 registered, 1 failed, 2 usage."
    )
    parser = sub.add_parser("register", help="register the callback URL with Flowscribe", description=description)
    parser.add_argument("--api-base", required=True, metavar="URL",
                        help="Flowscribe's API root, the part before api/ConversationAnalysis/...")
    parser.add_argument("--callback-url", required=True, metavar="URL",
                        help="the public URL of our callback, https://<host>/flowscribe/callback/<token>")
    parser.add_argument("--api-key-header", default=DEFAULT_API_KEY_HEADER, metavar="NAME",
                        help=f"the header that carries FLOWSCRIBE_API_KEY (default {DEFAULT_API_KEY_HEADER})")
    parser.add_argument("--check", action="store_true",
                        help="first post the vendor's sample to the callback URL and register only if"
                             " our gateway answers 202 (the sample is then stored like any callback)")
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS, metavar="N",
                        help=f"tries per request for transient failures (default {DEFAULT_ATTEMPTS})")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="deadline of each request (default 30)")
    parser.set_defaults(run=lazy("ops.register:main"))


def main(settings: Settings, args: argparse.Namespace) -> int:
    if args.attempts < 1 or not args.timeout > 0:
        print("flowscribe-ingest register: --attempts must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    api_key = settings.api_key[0] if settings.api_key else None
    return asyncio.run(register(
        args.api_base, args.callback_url, api_key=api_key, api_key_header=args.api_key_header,
        check=args.check, signing_keys=tuple(settings.signing_secrets),
        retry=Retry(attempts=args.attempts), timeout=args.timeout,
    ))
