"""A test whose program this machine lacks is skipped with the package that brings it and
the command that installs it, and fails under CI (whose set-up installs the whole list), so
nothing is skipped there unseen. Every program the tests ask for is in that one list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import TEST_PACKAGES, require_tool, system_package, unavailable

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent


def test_a_missing_program_skips_naming_its_package(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # aria2c lives in /usr/bin, not in an sbin
    with pytest.raises(pytest.skip.Exception,
                       match=r"aria2c is not installed: apt-get install aria2 "):
        require_tool("aria2c")


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_a_missing_program_fails(monkeypatch, tmp_path, value):
    monkeypatch.setenv("CI", value)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="aria2c is not installed"):
        require_tool("aria2c")


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_ci_switched_off_skips(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no such thing"):
        unavailable("no such thing here")


def test_every_program_the_tests_ask_for_is_listed():
    asked = set()
    for path in TESTS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        asked |= set(re.findall(r'(?:require_tool|package_missing)\("([^"]+)"', text))
    assert {"curl", "nginx", "slapd", "chromium", "java", "node", "npm"} <= asked
    for program in sorted(asked):
        assert system_package(program)  # KeyError names the one missing from the list


def test_the_list_is_program_then_package():
    for line in TEST_PACKAGES.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        assert not fields or len(fields) == 2, line


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is not None,
                    reason="needs a user without sudo: root runs the script as nobody")
def test_without_root_the_script_names_the_command_and_goes_on():
    """Nothing is installed: the missing package and the one command, exit 0."""
    listed = "curl curl\nno-such-program-of-the-tests  portal-test-package  # a comment\n"
    with tempfile.TemporaryDirectory() as folder:
        script = ROOT / "scripts" / "test-packages.sh"
        if os.geteuid() == 0:
            # nobody may not be able to read the checkout (a clone in a mktemp -d folder is
            # root's alone): the script runs from a copy in a folder everyone can read
            os.chmod(folder, 0o755)
            (Path(folder) / "scripts").mkdir(mode=0o755)
            script = Path(shutil.copy(script, Path(folder) / "scripts" / script.name))
        cmd = ["bash", str(script), "-"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "nobody", "--", *cmd]
        done = subprocess.run(cmd, input=listed, capture_output=True, text=True, timeout=60,
                              check=False)
    assert done.returncode == 0, done.stderr
    assert "missing portal-test-package;" in done.stdout
    assert ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "portal-test-package'") in done.stdout
    assert " curl" not in done.stdout
