"""Settings an operator got wrong: the service stops at once, exit 2, naming the variable."""

from __future__ import annotations

import pytest

from services.config import Settings
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("service", "env", "names"),
    [
        ("gateway", {"CERTPLANE_BUNDLE_WORKERS": "many"}, ["CERTPLANE_BUNDLE_WORKERS", "auto"]),
        ("projector", {"CERTPLANE_AUDIT_SEAL_EVERY": "0"}, ["CERTPLANE_AUDIT_SEAL_EVERY", "at least 1"]),
        ("projector", {"CERTPLANE_AUDIT_SEAL_SECONDS": "soon"}, ["CERTPLANE_AUDIT_SEAL_SECONDS", "a number"]),
        ("gateway", {"CERTPLANE_MASTER_KEY": "", "CERTPLANE_MASTER_KEY_FILE": "/nonexistent/master.key"},
         ["no master key", "CERTPLANE_MASTER_KEY"]),
    ],
)  # fmt: skip
def test_a_bad_setting_exits_2_naming_it_without_a_traceback(
    settings: Settings, service: str, env: dict[str, str], names: list[str]
) -> None:
    args = ["certificates"] if service == "projector" else []
    result = run_cli(settings, service, *args, **env)
    assert result.returncode == 2, result.stderr
    assert all(name in result.stderr for name in names), result.stderr
    assert "Traceback" not in result.stderr
