"""scripts/team_services.sh keeps the generated PostgreSQL password off every command line (which
`ps` shows to every user) and out of the URIs it hands out: it lives in a 0600 libpq password file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_postgres_password_is_on_no_command_line_and_in_no_uri(team_services):
    passfile = Path(team_services["PGPASSFILE"])
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    host, port, _, user, password = passfile.read_text().strip().split(":")
    assert (host, user) == ("127.0.0.1", "mlflow") and len(password) == 32
    seen = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        seen += "mlflow" in cmdline and "server" in cmdline
        assert password not in cmdline, f"pid {proc.name} shows the password: {cmdline.replace(chr(0), ' ')[:200]}"
    assert seen, "the mlflow server's command line was not found (the scan did not look at it)"
    env_file = Path(team_services["TEAM_STATE_DIR"]) / "env"
    assert password not in env_file.read_text()
    assert password not in team_services["TEAM_PG_URI"] and f":{port}/mlflow?passfile=" in team_services["TEAM_PG_URI"]
    assert os.access(passfile, os.R_OK)
