"""Standard Webhooks signatures (https://www.standardwebhooks.com) as a sender makes them.

The headers and the signed content are the contract between Flowscribe and the
gateway, which checks them (gateway.signatures); ``sign`` is for whoever sends
as Flowscribe would: ``flowscribe-ingest register --check``, the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """A ``webhook-signature`` entry (tests, and tools that replay dead letters)."""
    mac = hmac.new(key, b"%s.%d." % (msg_id.encode(), timestamp), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()
