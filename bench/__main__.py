"""``python -m bench [--quick] [--only PHASE ...] [--profile]``: every figure next to its ceiling, one run.

The phases are in bench/harness.py, the profiler in bench/profile.py; this module only
puts them together, so neither imports the other's caller.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import harness, profile


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (smaller counts, shorter runs)")
    parser.add_argument("--only", nargs="+", choices=[*harness.PHASES, "profile"], help="run only these phases")
    parser.add_argument("--profile", action="store_true", help="also profile worker and gateway with py-spy")
    return asyncio.run(harness.main_async(parser.parse_args(), profile=profile.run))


if __name__ == "__main__":
    sys.exit(main())
