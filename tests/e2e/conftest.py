"""End-to-end fixtures: services run as separate processes, started as an operator would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from services.config import Settings
from tests.conftest import REPO, env_for

_STARTED: list[ServiceProcess] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """Whatever a test started is stopped, even when the test failed half-way."""
    yield
    while _STARTED:
        _STARTED.pop().stop()


class ServiceProcess:
    """A `certplane <service>` child process with its output kept in a file."""

    def __init__(self, settings: Settings, args: list[str], log_path: Path, **env: str) -> None:
        self.settings, self.args, self.log_path, self.env = settings, args, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *self.args],
                env=env_for(self.settings, **self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        _STARTED.append(self)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_gateway(settings: Settings, timeout: float = 30.0) -> None:
    """Block until a gateway answers a read request on this test's prefix."""

    async def probe() -> bool:
        nc = await nats.connect(settings.nats_url)
        try:
            await nc.request(f"{settings.prefix}.query._.gateway-key", b"", timeout=0.5)
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(probe()):
            return
        time.sleep(0.1)
    raise TimeoutError("the gateway did not come up")


@pytest.fixture
def gateway_process(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(settings, ["gateway"], tmp_path / "gateway.log").start()
    wait_for_gateway(settings)
    yield service
    service.stop()


@pytest.fixture
def projector_process(
    settings: Settings, tmp_path: Path, gateway_process: ServiceProcess
) -> Iterator[ServiceProcess]:
    service = ServiceProcess(settings, ["projector"], tmp_path / "projector.log").start()
    yield service
    service.stop()
    asyncio.run(_delete_bucket(settings))


async def _delete_bucket(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        await nc.jetstream().delete_key_value(settings.router_bucket)
    except Exception:
        pass
    finally:
        await nc.close()


@pytest.fixture
def files(ca, tmp_path: Path) -> dict[str, Path]:
    """A chain for www.example.com and *.example.com written as a user would have it."""
    leaf = ca.leaf("www.example.com", "*.example.com")
    return ca.write(tmp_path / "certs", leaf)


os.environ.setdefault("CERTPLANE_LOG_LEVEL", "INFO")
