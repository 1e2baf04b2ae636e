"""Releases of flowscribe-ingest as processes: this tree, and a pinned earlier one installed as an
operator has it (its own tree from this repository's history, its own dependencies from its own
lock, `pip --require-hashes`, in its own virtualenv), for the upgrade tests.

An installed release is kept under a directory named by its commit
(``$FLOWSCRIBE_TEST_RELEASES``, default ``~/.cache/flowscribe-ingest/releases``): the first run
installs it (about a minute), later runs reuse it. Installs are locked, so parallel runs share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from tests.support import CliProcess

ROOT = Path(__file__).resolve().parents[1]
# The release deployed before this one: what the upgrade tests upgrade from (and roll back to).
PREVIOUS_RELEASE = "785ee1cafc69edc9d42970d71603de93ee3aa194"
CACHE = Path(os.environ.get("FLOWSCRIBE_TEST_RELEASES", Path.home() / ".cache" / "flowscribe-ingest" / "releases"))


class ReleaseMissing(RuntimeError):
    """The pinned commit is not in this repository's history (a shallow clone)."""


@dataclasses.dataclass(frozen=True)
class Release:
    name: str
    source: Path  # the tree its modules are imported from
    python: Path  # the interpreter of its virtualenv

    async def start(self, command: str, env: dict[str, str], *args: str) -> CliProcess:
        """`flowscribe-ingest COMMAND ARGS...` of this release, as a child process."""
        process = await asyncio.create_subprocess_exec(
            str(self.python), "-m", "flowscribe_ingest", *command.split(), *args, cwd=self.source,
            env={**env, "PYTHONPATH": str(self.source)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        return CliProcess(process, f"{self.name} {command}")


THIS_TREE = Release("this tree", ROOT, Path(sys.executable))


def installed(commit: str, cache: Path = CACHE) -> Release:
    """The release at ``commit``: from the cache, or installed there now."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise ReleaseMissing(
            f"commit {commit} (the previous release, which the upgrade tests install) is not in this"
            " repository's history: a shallow clone? `git fetch --unshallow` (or fetch that commit)")
    full = found.stdout.strip()
    home = cache / full
    release = Release(full[:7], home / "src", home / "venv" / "bin" / "python")
    if (home / "complete").exists():
        return release
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f"{full}.lock"):
        if (home / "complete").exists():  # installed by a parallel run meanwhile
            return release
        partial = cache / f"{full}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        tree = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", full],
                              capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
            archive.extractall(partial / "src", filter="data")
        subprocess.run([sys.executable, "-m", "venv", str(partial / "venv")], check=True)
        # Exactly its own pins, hashes checked: what its Dockerfile and deploy/ install.
        subprocess.run([str(partial / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--require-hashes", "-r", str(partial / "src" / "requirements" / "run.txt")],
                       check=True, capture_output=True)
        (partial / "complete").touch()
        # `python -m` of a moved virtualenv still finds its own packages (pyvenv.cfg beside it).
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)
    return release


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
