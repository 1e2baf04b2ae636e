"""Standard Webhooks signatures (https://www.standardwebhooks.com), verified over the exact body.

A signed request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds)
and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries
(several while the sender rotates secrets) over ``{id}.{timestamp}.{body}``.
We check the headers first, before reading a body we might refuse, then the
HMAC over the bytes exactly as received - never over something re-serialised.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from schemas.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["ID_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SignatureError", "SignatureVerifier", "sign"]

# Bounds that no honest sender comes near, so a hostile header costs nothing.
_MAX_ID = 256
_MAX_SIGNATURES = 16
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """Why a request's signature was refused (said to the sender: no secrets in it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SignedHeaders:
    """The signature headers of one request, parsed and within the time tolerance."""

    prefix: bytes  # b"{id}.{timestamp}.", what precedes the body in the signed content
    signatures: tuple[bytes, ...]  # the v1 HMACs the sender offers


class SignatureVerifier:
    """Checks requests against the configured secrets (any of them may have signed)."""

    def __init__(self, keys: Sequence[bytes], tolerance: float) -> None:
        if not keys:
            raise ValueError("no signing secrets")
        self._keys = tuple(keys)
        self._tolerance = tolerance

    def check_headers(self, headers: Mapping[str, str], now: float) -> SignedHeaders:
        """Parse the three headers and check the timestamp; SignatureError if unusable."""
        msg_id = headers.get(ID_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
        offered = headers.get(SIGNATURE_HEADER, "")
        if not (msg_id and timestamp and offered):
            raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
        if len(msg_id) > _MAX_ID:
            raise SignatureError("webhook-id too long")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureError("webhook-timestamp is not Unix seconds")
        if abs(now - int(timestamp)) > self._tolerance:
            raise SignatureError("webhook-timestamp outside the accepted tolerance")
        signatures = []
        for entry in offered.split()[:_MAX_SIGNATURES]:
            version, _, value = entry.partition(",")
            if version != "v1":
                continue  # other schemes (v1a: asymmetric) are not ours to check
            try:
                signatures.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not signatures:
            raise SignatureError("no v1 signature in webhook-signature")
        # Header values arrive decoded with surrogateescape: this gives back their bytes.
        raw_id = msg_id.encode("utf-8", "surrogateescape")
        return SignedHeaders(b"%s.%s." % (raw_id, timestamp.encode()), tuple(signatures))

    def verify(self, signed: SignedHeaders, body: bytes) -> None:
        """SignatureError unless one offered signature is the HMAC of one of our secrets."""
        matched = False
        for key in self._keys:
            mac = hmac.new(key, signed.prefix, hashlib.sha256)
            mac.update(body)
            expected = mac.digest()
            for offered in signed.signatures:
                # No early exit: the time taken does not depend on which one matched.
                matched |= hmac.compare_digest(expected, offered)
        if not matched:
            raise SignatureError("no valid signature for this body")
