"""deploy/systemd/: the units of a VM install, as ``systemd-analyze verify`` reads them (with
their shared drop-in), and every command they run being one the installed portal has.

verify needs each ExecStart program to exist, so the units are checked in a copy whose
/opt/campus-portal/bin/campus-portal is a stub of the test's own; systemd need not be PID 1.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from servers import ROOT, require_tool

UNITS = ROOT / "deploy" / "systemd"
PROGRAM = "/opt/campus-portal/bin/campus-portal"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The units and their drop-in folder, with PROGRAM replaced by an executable stub."""
    root = tmp_path_factory.mktemp("systemd")
    stub = root / "campus-portal"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for source in UNITS.rglob("*"):
        if source.is_file():
            target = root / "units" / source.relative_to(UNITS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text().replace(PROGRAM, str(stub)))
    return root / "units"


def test_systemd_analyze_verify_finds_nothing(rendered):
    units = sorted(path.name for path in rendered.glob("campus-portal-*.*") if path.is_file())
    assert {"campus-portal-web.service", "campus-portal-flusher.service"} <= set(units)
    done = subprocess.run([require_tool("systemd-analyze"), "verify", "--man=no", *units],
                          cwd=rendered, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # the shared drop-in was read: a mistake in it is reported
    dropin = rendered / "campus-portal-.service.d" / "10-portal.conf"
    dropin.write_text(dropin.read_text() + "ProtectSystem=sometimes\n")
    again = subprocess.run([require_tool("systemd-analyze"), "verify", "--man=no",
                            "campus-portal-web.service"], cwd=rendered, capture_output=True,
                           text=True, timeout=120, check=False)
    assert "10-portal.conf" in again.stderr


def test_every_service_is_hardened_and_sandboxed_by_the_shared_drop_in():
    dropin = (UNITS / "campus-portal-.service.d" / "10-portal.conf").read_text()
    for line in ("User=campus-portal", "EnvironmentFile=/etc/campus-portal/portal.env",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "ReadWritePaths=-/srv/campus-portal", "StateDirectory=campus-portal"):
        assert f"\n{line}\n" in dropin, line
    for unit in UNITS.glob("*.service"):
        assert unit.name.startswith("campus-portal-"), unit.name  # the drop-in's prefix
    for timer in UNITS.glob("*.timer"):
        assert (UNITS / f"{timer.stem}.service").is_file(), timer.name


def exec_starts() -> list[list[str]]:
    """The arguments each service gives the portal's command."""
    found = []
    for unit in sorted(UNITS.glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                program, *args = shlex.split(line.removeprefix("ExecStart="))
                assert program == PROGRAM, unit.name
                found.append(args)
    return found


def test_every_command_the_units_run_is_one_of_the_portal(app):
    runner = app.test_cli_runner()
    commands = exec_starts()
    assert ["serve"] in commands
    for args in commands:
        if args == ["serve"]:  # portal/serve.py's own, before the Flask commands
            continue
        args = [arg if not arg.startswith("${") else "/tmp/export" for arg in args]
        result = runner.invoke(args=[*args, "--help"])  # options are parsed before --help
        assert result.exit_code == 0, (args, result.output)
