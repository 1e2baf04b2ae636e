"""The command's contract with scripts and operators: its version, and how it refuses what it cannot run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runtime.settings import Settings, SettingsError

ROOT = Path(__file__).parent.parent


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flowscribe_ingest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m flowscribe_ingest ARGS`` with only the given FLOWSCRIBE_* settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCRIBE_")}
    environ |= {"FLOWSCRIBE_LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "flowscribe_ingest", *args],
        env=environ, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


class TestVersion:
    """`--version` says the version pyproject.toml declares; `python -m flowscribe_ingest` is the command."""

    def test_version(self) -> None:
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        result = flowscribe_ingest("--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"flowscribe-ingest {declared}"

    def test_changelog_has_a_section_for_the_version(self) -> None:
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        changelog = (ROOT / "CHANGELOG.md").read_text()
        assert "## [Unreleased]" in changelog
        assert f"## [{declared}] - " in changelog


class TestBadSettings:
    """A setting the process cannot use stops it before it starts: exit status 2, the variable named."""

    @pytest.mark.parametrize(("variable", "value"), [
        ("FLOWSCRIBE_WORKER_PREFETCH", "-3"),
        ("FLOWSCRIBE_GATEWAY_PORT", "-1"),
        ("FLOWSCRIBE_WORKER_HTTP_PORT", "65536"),
    ])
    def test_out_of_range_integers_are_refused(self, variable: str, value: str) -> None:
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: value})

    def test_zero_still_means_what_the_readme_says(self) -> None:
        settings = Settings.from_env({"FLOWSCRIBE_WORKER_PREFETCH": "0", "FLOWSCRIBE_WORKER_HTTP_PORT": "0"})
        assert settings.worker_prefetch == 3 * settings.batch_size
        assert settings.worker_http_port == 0

    def test_negative_prefetch_exits_2(self) -> None:
        # An unreachable database: the command must stop at the setting, before connecting.
        result = flowscribe_ingest(
            "migrate", FLOWSCRIBE_WORKER_PREFETCH="-3",
            FLOWSCRIBE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/flowscribe",
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == "flowscribe-ingest: bad setting: FLOWSCRIBE_WORKER_PREFETCH='-3': must be >= 0\n"

    def test_gateway_without_a_token_exits_2(self) -> None:
        result = flowscribe_ingest("gateway", FLOWSCRIBE_GATEWAY_HOST="127.0.0.1", FLOWSCRIBE_GATEWAY_PORT="0")
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[-1] == (
            "flowscribe-ingest: bad setting: FLOWSCRIBE_CALLBACK_TOKENS is empty: set at least one callback token"
        )


class TestUnreachableDatabase:
    """`migrate` against a database that is not there says so in one line with a hint, as the ops commands do."""

    def test_migrate_says_one_line(self) -> None:
        url = f"postgresql://flowscribe:hunter2@127.0.0.1:{closed_port()}/flowscribe"
        result = flowscribe_ingest("migrate", FLOWSCRIBE_DATABASE_URL=url)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
        said = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # not the JSON log lines
        assert len(said) == 1, result.stderr
        assert said[0].startswith(
            f"flowscribe-ingest: cannot reach PostgreSQL at {url.replace('hunter2', '***')}: "
        ), said[0]
        assert said[0].endswith("; is it running? set FLOWSCRIBE_DATABASE_URL"), said[0]
