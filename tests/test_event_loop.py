"""The processes' event loop (runtime/event_loop.py): uvloop by default, the stdlib's on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from runtime import event_loop
from runtime.settings import Settings, SettingsError


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_uvloop_is_the_default_loop_of_the_processes() -> None:
    settings = Settings.from_env({})
    assert settings.event_loop == "uvloop"
    assert isinstance(event_loop.run(_running_loop(), settings.event_loop), uvloop.Loop)


def test_the_stdlib_loop_on_request() -> None:
    settings = Settings.from_env({"FLOWSCRIBE_EVENT_LOOP": "asyncio"})
    loop = event_loop.run(_running_loop(), settings.event_loop)
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(SettingsError, match="FLOWSCRIBE_EVENT_LOOP"):
        Settings.from_env({"FLOWSCRIBE_EVENT_LOOP": "tokio"})
