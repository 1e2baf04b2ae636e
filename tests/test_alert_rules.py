"""deploy/prometheus-alerts.yaml, checked as Prometheus checks it: `promtool check rules` and `promtool test rules`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus-alerts.yaml"
UNIT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yaml"


def find_promtool() -> str | None:
    """On PATH, or where scripts/bootstrap puts it: beside this virtualenv's python."""
    search = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return shutil.which("promtool", path=os.pathsep.join(search))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = find_promtool()
    if found is None:
        pytest.skip("promtool not found: scripts/bootstrap takes it from Debian's prometheus package,"
                    " which this machine could not get")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    return tests


class TestAlertRules:
    """The rules load in Prometheus, and each alert fires (and stays quiet) when its unit tests say."""

    def test_rules_pass_promtool_check(self, promtool: str) -> None:
        result = run(promtool, "check", "rules", str(RULES))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_unit_tests_pass(self, promtool: str) -> None:
        result = run(promtool, "test", "rules", str(UNIT_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_alert_has_a_firing_and_a_quiet_case(self) -> None:
        document = yaml.safe_load(RULES.read_text())
        alerts = {rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule}
        cases = [case for test in unit_tests() for case in test.get("alert_rule_test", [])]
        fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
        quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
        assert alerts - fired == set(), "alerts no unit test sees firing"
        assert alerts - quiet == set(), "alerts no unit test sees quiet"
        assert (fired | quiet) - alerts == set(), "unit tests of alerts that do not exist"
