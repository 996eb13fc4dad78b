"""End-to-end fixtures: services run as separate processes, started as an operator would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


# -- routers ------------------------------------------------------------------------------


class Upstream:
    """A real HTTP/1.1 app server (threaded, keep-alive) that answers with what it received."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        seen = self.requests = []  # type: ignore[var-annotated]

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.startswith("/slow"):
                    time.sleep(float(self.path.rsplit("/", 1)[1]))
                headers = {k: v for k, v in self.headers.items()}
                seen.append(headers)
                body = json.dumps({"path": self.path, "headers": headers}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


class RouterProcess(ServiceProcess):
    """`certplane router` on free ports; `https_port`/`http_port`/`router_id` once ready."""

    def __init__(
        self, settings: Settings, tmp_path: Path, name: str, upstream: str, **env: str
    ) -> None:
        self.ready_file = tmp_path / f"{name}.ready"
        super().__init__(
            settings,
            ["router", "--id", name, "--https-port", "0", "--http-port", "0",
             "--upstream", f"*={upstream}", "--ready-file", str(self.ready_file),
             "--drain-timeout", "5"],
            tmp_path / f"{name}.log",
            **env,
        )  # fmt: skip
        self.router_id = name

    def start(self, timeout: float = 30.0) -> RouterProcess:
        import json

        self.ready_file.unlink(missing_ok=True)
        super().start()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the router did not start:\n{self.output[-3000:]}")
            time.sleep(0.05)
        addresses = json.loads(self.ready_file.read_text())["addresses"]
        self.https_port = int(addresses[0].rsplit(":", 1)[1])
        self.http_port = int(addresses[1].rsplit(":", 1)[1])
        return self


@pytest.fixture
def start_router(
    settings: Settings, tmp_path: Path, upstream: Upstream
) -> Iterator[Callable[..., RouterProcess]]:
    started: list[RouterProcess] = []

    def start(name: str = "router-1", settings_: Settings | None = None) -> RouterProcess:
        router = RouterProcess(settings_ or settings, tmp_path, name, upstream.url).start()
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


def s_client(port: int, servername: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    """`openssl s_client` as the Heroku docs tell users to check a certificate."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *extra]
    if servername is not None:
        args += ["-servername", servername]
    return subprocess.run(args, input="", capture_output=True, text=True, timeout=30)


def presented_chain(port: int, servername: str) -> list[str]:
    """SHA-256 fingerprints of the chain a handshake for `servername` presents ([] if none)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    result = s_client(port, servername)
    pems = [
        "-----BEGIN CERTIFICATE-----" + block.split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n"
        for block in result.stdout.split("-----BEGIN CERTIFICATE-----")[1:]
    ]  # fmt: skip
    return [x509.load_pem_x509_certificate(p.encode()).fingerprint(hashes.SHA256()).hex()
            for p in pems]  # fmt: skip


def fingerprints(*pems: bytes) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return [x509.load_pem_x509_certificate(p).fingerprint(hashes.SHA256()).hex() for p in pems]
