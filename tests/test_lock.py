"""requirements/*.txt pin what pyproject.toml asks for, and every install uses them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", re.MULTILINE)
LOCKS = sorted(path.name for path in (ROOT / "requirements").glob("*.txt"))


def extras(lock: str) -> tuple[str, ...]:
    """The extras of pyproject.toml a lock installs, from the first line scripts/lock writes."""
    first = (ROOT / "requirements" / lock).read_text().split("\n", 1)[0]
    listed = re.search(r"from pyproject\.toml(?: extras ([\w, -]+))?;", first)
    assert listed, f"requirements/{lock} was not written by scripts/lock"
    return tuple(e.strip() for e in (listed[1] or "").split(",") if e.strip())


def pins(lock: str) -> dict[str, list[tuple[str, str | None]]]:
    """name -> [(version, environment marker or None)] (a universal lock may pin per Python version)."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for name, version, marker in PIN.findall((ROOT / "requirements" / lock).read_text()):
        found.setdefault(canonicalize_name(name), []).append((version, marker or None))
    return found


def wanted(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [Requirement(r) for r in listed]


class TestLock:
    """The lock matches pyproject.toml, so an install never resolves anything afresh."""

    def test_lock_was_made_from_this_pyproject(self) -> None:
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock"), "--check"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr

    @pytest.mark.parametrize("lock", LOCKS)
    def test_every_requirement_is_pinned_within_its_range(self, lock: str) -> None:
        pinned = pins(lock)
        for requirement in wanted(extras(lock)):
            versions = pinned.get(canonicalize_name(requirement.name))
            assert versions, f"{requirement.name} is not in requirements/{lock}: run `make lock`"
            for version, _ in versions:
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"requirements/{lock} pins {requirement.name}=={version}, outside {requirement}: run `make lock`"
                )

    def test_every_pin_has_hashes(self) -> None:
        for lock in LOCKS:
            text = (ROOT / "requirements" / lock).read_text()
            for entry in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
                assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]} has no hash"

    def test_installs_use_the_lock(self) -> None:
        bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
        assert "pip install --quiet --require-hashes -r requirements/test.txt" in bootstrap
        assert "pip install --quiet --no-deps -e ." in bootstrap
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "pip install --no-cache-dir --require-hashes -r requirements/run.txt" in dockerfile
        assert "pip install --no-cache-dir --no-deps ." in dockerfile
        makefile = (ROOT / "Makefile").read_text()
        assert "--require-hashes -r requirements/bench.txt" in makefile
