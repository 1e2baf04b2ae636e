"""A dead letter decoded again with this version's reader: does it pass now, and which analysis is it?"""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage

from runtime.errors import describe
from schemas.decoding import PayloadDecodeError, decode_payload
from schemas.message import Callback, InvalidMessage, to_callback


def recheck(message: AbstractIncomingMessage) -> tuple[Callback | None, str | None]:
    """What the worker would make of ``message`` now: the decoded callback, or why it still fails."""
    try:
        return to_callback(message), None
    except (PayloadDecodeError, InvalidMessage) as e:
        return None, describe(e)


def analysis_id(message: AbstractIncomingMessage) -> str | None:
    """The analysis the message's body is about, if it decodes and has one."""
    try:
        payload = decode_payload(message.body, message.content_type)
    except PayloadDecodeError:
        return None
    analysis = payload.ConversationAnalysisModel
    return str(analysis.ID) if analysis is not None else None
