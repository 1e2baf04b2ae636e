"""Command handlers named by ``"package.module:function"`` and imported only when one runs.

The command line hangs one on every subcommand (``set_defaults(run=lazy(...))``):
parsing loads none of them, so ``flowscribe-ingest worker`` never imports the
ops tools or the gateway, and ``--help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any


class lazy:  # lower case: reads as what it does, set_defaults(run=lazy("ops.commands:main"))
    """A callable standing for ``spec``'s function, imported on the first call."""

    __slots__ = ("spec",)

    def __init__(self, spec: str) -> None:
        module, sep, name = spec.partition(":")
        if not (module and sep and name):
            raise ValueError(f"{spec!r} is not 'package.module:function'")
        self.spec = spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.spec.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.spec!r})"
