"""``python -m bench [--quick] [--only PHASE ...] [--profile]``: every figure next to its ceiling, one run.

The phases are in bench/harness.py, the profiler in bench/profile.py, the analytics views'
scenario (``--only analytics``, not in the full run) in bench/analytics.py; this module only
puts them together, so none imports its caller.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import analytics, harness, profile

# Run after the phases, only when named in --only (the profile also with --profile).
EXTRAS = {"profile": profile.run, "analytics": analytics.run}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (smaller counts, shorter runs)")
    parser.add_argument("--only", nargs="+", choices=[*harness.PHASES, *EXTRAS], help="run only these phases")
    parser.add_argument("--profile", action="store_true", help="also profile worker and gateway with py-spy")
    args = parser.parse_args()
    wanted = set(args.only or ()) | ({"profile"} if args.profile else set())
    return asyncio.run(harness.main_async(args, {name: run for name, run in EXTRAS.items() if name in wanted}))


if __name__ == "__main__":
    sys.exit(main())
