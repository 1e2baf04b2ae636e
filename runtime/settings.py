"""Settings, built once per process from the environment and passed down.

Every setting is one field here with its environment variable, default and
meaning; the README's configuration table lists the same (a test keeps them in
step).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from runtime.urls import amqp_urls, database_url, redact_urls


class SettingsError(ValueError):
    """A setting in the environment has a value we cannot use."""


class Secrets(tuple[Any, ...]):
    """Callback tokens: a tuple whose repr never shows them (settings get logged)."""

    def __repr__(self) -> str:
        return f"<{len(self)} secret(s)>"

    __str__ = __repr__


# A token travels in the URL path, and the gateway finds it in log lines to
# redact it: only characters that appear verbatim in a URL, JSON or a repr.
_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")


def _tokens(raw: str) -> Secrets:
    tokens = Secrets(t.strip() for t in raw.split(",") if t.strip())
    if not all(_TOKEN.fullmatch(t) for t in tokens):
        raise ValueError("tokens may contain only letters, digits and . _ ~ -")
    return tokens


def _signing_secrets(raw: str) -> Secrets:
    """Standard Webhooks secrets, ``whsec_<base64>``, as the raw HMAC keys."""
    keys = []
    for secret in (s.strip() for s in raw.split(",")):
        if not secret:
            continue
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("each secret must be whsec_ followed by base64") from None
        if len(key) < 16:
            raise ValueError("each secret must decode to at least 16 bytes")
        keys.append(key)
    return Secrets(keys)


def _secret(raw: str) -> Secrets:
    """One secret (an API key) as it is, in Secrets so that it is never shown."""
    return Secrets([raw.strip()]) if raw.strip() else Secrets()


def _long_secret(raw: str) -> Secrets:
    """One secret key, long enough to key an HMAC with (kept in Secrets: never shown)."""
    if len(raw.strip()) < 32:
        raise ValueError("must be at least 32 characters (flowscribe-ingest token new makes one)")
    return Secrets([raw.strip()])


ROLES = ("view", "operate")
_NAME = re.compile(r"[A-Za-z0-9._@-]+")


@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleCredential:
    """One console login: who (the name the audit log shows), what they may do, and the secret."""

    name: str
    role: str  # view | operate
    token: str = dataclasses.field(repr=False)


def _console_credentials(raw: str) -> Secrets:
    """``name:role:token`` entries, comma-separated (names and tokens unique)."""
    credentials = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role, _, token = rest.partition(":")
        if not (_NAME.fullmatch(name) and role in ROLES and _TOKEN.fullmatch(token)):
            raise ValueError(
                "each entry must be name:role:token, role view or operate, the name letters, digits"
                " and . _ @ -, the token letters, digits and . _ ~ -"
            )
        credentials.append(ConsoleCredential(name, role, token))
    if len({c.name for c in credentials}) < len(credentials) or len({c.token for c in credentials}) < len(credentials):
        raise ValueError("names and tokens must each be unique")
    return Secrets(credentials)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in raw.split(",") if n.strip())


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be >= 0")
    return value


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer parser that refuses values outside [low, high] instead of reading them some other way."""

    def parse(raw: str) -> int:
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be >= {low}" if high is None else f"must be {low}-{high}")
        return value

    return parse


_positive_int = _int_in(1)
_non_negative_int = _int_in(0)
_port = _int_in(0, 65535)


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw.lower()

    return parse


def _trace_url(raw: str) -> str:
    """An http(s) address with ``{trace_id}`` in it (the console puts a trace's id there)."""
    raw = raw.strip()
    if not re.match(r"https?://[^/\s]+", raw) or "{trace_id}" not in raw:
        raise ValueError("must be an http(s):// address with {trace_id} in it")
    return raw


def _amqp_url_list(raw: str) -> str:
    """The setting as given, once every URL in it is known to be one (``amqp_urls`` splits it)."""
    amqp_urls(raw)
    return raw.strip()


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = _setting(
        "FLOWSCRIBE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", _amqp_url_list,
        "RabbitMQ URL (aio-pika form; `?heartbeat=` etc. allowed), or several, comma-separated"
        " (one per cluster node): each process connects to one that answers and moves on to the"
        " next when it is lost (see \"Running on a cluster\").",
    )
    database_url: str = _setting(
        "FLOWSCRIBE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flowscribe", database_url,
        "PostgreSQL URL; libpq's multi-host form (`postgresql://u@h1:5432,h2:5432/db`) reaches"
        " whichever host is the primary (`target_session_attrs=read-write` is implied). `migrate`"
        " creates the database if it does not exist.",
    )
    callback_tokens: Secrets = _setting(
        "FLOWSCRIBE_CALLBACK_TOKENS", Secrets(), _tokens,
        "Comma-separated secrets accepted in the callback URL. Several may be valid at once"
        " (rotation). The gateway refuses to start without one.",
    )
    gateway_host: str = _setting(
        "FLOWSCRIBE_GATEWAY_HOST", "0.0.0.0", str, "Address the gateway listens on."
    )
    gateway_port: int = _setting(
        "FLOWSCRIBE_GATEWAY_PORT", 8080, _port, "Port the gateway listens on (0: any free port)."
    )
    gateway_processes: int = _setting(
        "FLOWSCRIBE_GATEWAY_PROCESSES", 1, _positive_int,
        "Gateway processes sharing the port (SO_REUSEPORT: the kernel spreads connections). One"
        " process uses one core; set the number of cores to use them all on one host. Each process"
        " has its own broker connection and `FLOWSCRIBE_MAX_INFLIGHT_BYTES`; `/metrics` adds them up.",
    )
    max_body_bytes: int = _setting(
        "FLOWSCRIBE_MAX_BODY_BYTES", 16 * 1024 * 1024, _positive_int,
        "Largest callback body accepted; larger ones get 413.",
    )
    publish_timeout: float = _setting(
        "FLOWSCRIBE_PUBLISH_TIMEOUT", 5.0, _positive_float,
        "Seconds the gateway waits for one publish's confirm before it counts as failed (then it is"
        " held and published again, see `FLOWSCRIBE_GATEWAY_PUBLISH_HOLD_SECONDS`).",
    )
    publish_hold_seconds: float = _setting(
        "FLOWSCRIBE_GATEWAY_PUBLISH_HOLD_SECONDS", 45.0, _non_negative_float,
        "Seconds the gateway holds a callback the broker did not confirm (connection lost, a node"
        " restarting, a queue electing its leader), publishing it again until confirmed; only then"
        " 503 with `Retry-After`. Covers the failovers measured (up to 30 s) with room, and with"
        " `FLOWSCRIBE_BODY_READ_TIMEOUT` stays inside a sender's 100 s HTTP timeout. 0: no hold.",
    )
    retry_after: int = _setting(
        "FLOWSCRIBE_RETRY_AFTER", 5, _positive_int,
        "Seconds put in `Retry-After` on a 503.",
    )
    signing_secrets: Secrets = _setting(
        "FLOWSCRIBE_SIGNING_SECRETS", Secrets(), _signing_secrets,
        "Comma-separated Standard Webhooks secrets (`whsec_<base64>`). When set, a callback must"
        " also carry a valid `webhook-signature` by one of them (several: rotation), else 401. Empty: off.",
    )
    signature_tolerance: float = _setting(
        "FLOWSCRIBE_SIGNATURE_TOLERANCE", 300.0, _positive_float,
        "Seconds a signed callback's `webhook-timestamp` may differ from the gateway's clock.",
    )
    allowed_networks: tuple[Any, ...] = _setting(
        "FLOWSCRIBE_ALLOWED_NETWORKS", (), _networks,
        "Comma-separated CIDRs callbacks may come from; others get 403. Empty: any source.",
    )
    trusted_proxies: tuple[Any, ...] = _setting(
        "FLOWSCRIBE_TRUSTED_PROXIES", (), _networks,
        "Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is believed (the right-most"
        " address not in this list is the source). Empty: the TCP peer is the source.",
    )
    rate_limit: float = _setting(
        "FLOWSCRIBE_RATE_LIMIT", 0.0, _non_negative_float,
        "Callback requests per second allowed per source address, beyond the burst; more get 429"
        " with `Retry-After`. 0: off.",
    )
    rate_burst: int = _setting(
        "FLOWSCRIBE_RATE_BURST", 20, _positive_int,
        "Requests a source may send at once before `FLOWSCRIBE_RATE_LIMIT` applies.",
    )
    max_inflight_bytes: int = _setting(
        "FLOWSCRIBE_MAX_INFLIGHT_BYTES", 64 * 1024 * 1024, _positive_int,
        "Most callback body bytes the gateway holds at once (being received or published);"
        " past it, 503 with `Retry-After`. Bounds the gateway's memory whatever the number of clients.",
    )
    body_read_timeout: float = _setting(
        "FLOWSCRIBE_BODY_READ_TIMEOUT", 30.0, _positive_float,
        "Seconds a client has to send the whole body; slower ones get 408.",
    )
    header_read_timeout: float = _setting(
        "FLOWSCRIBE_HEADER_READ_TIMEOUT", 15.0, _positive_float,
        "Seconds a connection has to send a complete request head, after connecting or after its"
        " previous response (idle keep-alive included); then it is closed.",
    )
    batch_size: int = _setting(
        "FLOWSCRIBE_WORKER_BATCH_SIZE", 100, _positive_int,
        "Most callbacks a worker writes in one transaction.",
    )
    batch_wait: float = _setting(
        "FLOWSCRIBE_WORKER_BATCH_WAIT", 0.05, _positive_float,
        "Seconds a worker waits to fill a batch before writing what it has.",
    )
    prefetch: int = _setting(
        "FLOWSCRIBE_WORKER_PREFETCH", 0, _non_negative_int,
        "Unacked messages a worker holds (0: three times the batch size: two batches being"
        " written and one being decoded).",
    )
    worker_max_held_bytes: int = _setting(
        "FLOWSCRIBE_WORKER_MAX_HELD_BYTES", 96 * 1024 * 1024, _positive_int,
        "Most bytes of callback bodies a worker holds (delivered and not yet landed). A delivery"
        " past it goes straight back to the queue, and the worker takes fewer at once"
        " (RabbitMQ's prefetch counts messages, not bytes); a larger callback lands on its own.",
    )
    worker_max_held_rows: int = _setting(
        "FLOWSCRIBE_WORKER_MAX_HELD_ROWS", 250_000, _positive_int,
        "Most decoded rows a worker holds (the batch being decoded and those being written); a batch"
        " closes when it reaches it, and the next one waits. With the byte budget this bounds the"
        " worker's memory whatever callbacks contain.",
    )
    max_attempts: int = _setting(
        "FLOWSCRIBE_MAX_ATTEMPTS", 5, _positive_int,
        "Write attempts per callback for transient database failures (serialization, deadlock)"
        " before it is dead-lettered as exhausted; waits between attempts grow: 1 s, 5 s, 30 s, 2 min, 10 min.",
    )
    database_retry_max_delay: float = _setting(
        "FLOWSCRIBE_DATABASE_RETRY_MAX_DELAY", 30.0, _positive_float,
        "Longest pause between attempts while the database is unreachable; the worker"
        " holds its batch and retries until it is back (nothing is dead-lettered for it).",
    )
    drift_sample_rate: float = _setting(
        "FLOWSCRIBE_DRIFT_SAMPLE_RATE", 0.01, _fraction,
        "Share of callbacks (0 to 1) a worker also checks for fields and objects the payload Structs"
        " do not know (schema drift: `flowscribe-ingest drift`). 0: off; 1: every callback.",
    )
    worker_http_host: str = _setting(
        "FLOWSCRIBE_WORKER_HTTP_HOST", "0.0.0.0", str,
        "Address the worker serves `/metrics`, `/healthz` and `/readyz` on.",
    )
    worker_http_port: int = _setting(
        "FLOWSCRIBE_WORKER_HTTP_PORT", 8081, _port,
        "Port of the worker's `/metrics`, `/healthz` and `/readyz` (0: any free port; the bound"
        " one is logged as `worker http listening`). Several workers on one host need one each, or 0.",
    )
    shutdown_timeout: float = _setting(
        "FLOWSCRIBE_SHUTDOWN_TIMEOUT", 30.0, _positive_float,
        "Seconds a stopping process waits for work in hand; what is left returns to the queue.",
    )
    reporting_time_zone: str = _setting(
        "FLOWSCRIBE_REPORTING_TIME_ZONE", "", str,
        "Time zone whose calendar days the analytics views report in (`Europe/London`,"
        " `America/New_York`: a name PostgreSQL knows). Applied by `migrate`, which moves every"
        " stored day to it; empty: keep the database's (`UTC` at first).",
    )
    log_format: str = _setting(
        "FLOWSCRIBE_LOG_FORMAT", "auto", _choice("auto", "json", "text"),
        "`json` (one object per line), `text`, or `auto` (text on a terminal, else json).",
    )
    log_level: str = _setting(
        "FLOWSCRIBE_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
        "Least severe level logged.",
    )
    trace_url: str = _setting(
        "FLOWSCRIBE_TRACE_URL", "", _trace_url,
        "The trace UI's page of one trace, `{trace_id}` standing for its id (Jaeger:"
        " `https://jaeger.example.com/trace/{trace_id}`); the console links each callback's page to its"
        " trace. Empty: no link. (Traces themselves are configured by the `OTEL_*` variables: see \"Traces\".)",
    )
    event_loop: str = _setting(
        "FLOWSCRIBE_EVENT_LOOP", "uvloop", _choice("uvloop", "asyncio"),
        "Event loop of the worker: `uvloop` (less CPU per message) or `asyncio` (the standard"
        " library's). The gateway and the console run on the standard library's: the gateway keeps"
        " its memory bound under many large uploads there, not under uvloop.",
    )
    api_key: Secrets = _setting(
        "FLOWSCRIBE_API_KEY", Secrets(), _secret,
        "Flowscribe API key, sent by `flowscribe-ingest register` in the header named by"
        " `--api-key-header`; no other command reads it, none prints it.",
    )

    console_host: str = _setting(
        "FLOWSCRIBE_CONSOLE_HOST", "127.0.0.1", str,
        "Address the operator's console listens on (keep it private: see \"The console\").",
    )
    console_port: int = _setting(
        "FLOWSCRIBE_CONSOLE_PORT", 8090, int, "Port of the operator's console (0: any free port)."
    )
    console_tokens: Secrets = _setting(
        "FLOWSCRIBE_CONSOLE_TOKENS", Secrets(), _console_credentials,
        "Console logins, comma-separated `name:role:token` (role `view` or `operate`). The name is"
        " what the audit log shows; the token is the password.",
    )
    console_session_secret: Secrets = _setting(
        "FLOWSCRIBE_CONSOLE_SESSION_SECRET", Secrets(), _long_secret,
        "Key of the console's sessions (kept in PostgreSQL): the same on every replica, at least 32"
        " characters (`flowscribe-ingest token new`). Changing it logs everyone out. Empty: a key of the"
        " process's own, so a restart logs everyone out and replicas do not share logins.",
    )
    console_user_header: str = _setting(
        "FLOWSCRIBE_CONSOLE_USER_HEADER", "", str,
        "Trusted-header mode: the request header in which an authenticating proxy (one of"
        " `FLOWSCRIBE_TRUSTED_PROXIES`) names the user; no login form then. Empty: off.",
    )
    console_operators: tuple[str, ...] = _setting(
        "FLOWSCRIBE_CONSOLE_OPERATORS", (), _names,
        "In trusted-header mode, the user names with the `operate` role; everyone else may only view.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env = field.metadata["env"]
            raw = environ.get(env)
            if raw is None or raw == "":
                continue
            try:
                values[field.name] = field.metadata["parse"](raw)
            except ValueError as e:
                shown = (
                    "<secret>" if isinstance(field.default, Secrets)
                    else repr(redact_urls(raw)) if field.name.endswith("_url")
                    else repr(raw)
                )
                raise SettingsError(f"{env}={shown}: {e}") from None
        values.update(overrides)
        return cls(**values)

    @property
    def worker_prefetch(self) -> int:
        return self.prefetch if self.prefetch > 0 else 3 * self.batch_size

    def public(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets and URL passwords hidden."""
        shown: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_url"):
                value = redact_urls(value)
            elif isinstance(value, Secrets):
                value = repr(value)
            shown[field.name] = value
        return shown

