"""What the store's functions run their statements on."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own (ops, tests) or one lent by the worker's pool: the same statements run on both.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
