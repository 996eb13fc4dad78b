"""A machine with neither PostgreSQL nor NATS: `certplane dev` starts embedded ones.

The configured URLs point where nothing listens, exactly as on a fresh laptop, so CI keeps
the first-run path of the README working.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_dev_demo_runs_on_embedded_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPLANE_")}
    env.update(
        CERTPLANE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/certplane",
        CERTPLANE_NATS_URL="nats://127.0.0.1:1",
        CERTPLANE_STATE_DIR=str(tmp_path / "state"),
        CERTPLANE_PREFIX="embedded",
        PYTHONPATH=str(REPO),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "dev",
            "--demo",
            "--https-port",
            "0",
            "--http-port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (
        "PostgreSQL: none at postgresql://postgres@127.0.0.1:1/certplane; started an embedded one"
        in result.stdout
    )
    assert "NATS: none at nats://127.0.0.1:1; started an embedded one" in result.stdout
    assert "Adding SSL to" in result.stdout and "Demo complete." in result.stdout
    assert "served by all 1 live router(s)" in result.stdout, "certs:add --wait did not converge"
    assert "X-Forwarded-Proto: https" in result.stdout, "the router did not answer"
    assert "the hash chain is intact" in result.stdout  # the auditor's check, on a fresh log
    key_file = tmp_path / "state" / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
