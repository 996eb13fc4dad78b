"""`certplane router`: the reference TLS router.

Wiring only: NATS (config watch, status reports), the SNI table, the two listeners, and a
graceful shutdown on SIGTERM (stop accepting, let in-flight requests finish, bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from events.router import RouterState, RouterStatus
from services.bus import connect_nats
from services.config import Settings
from services.health import add_readiness_check
from services.router.challenges import Challenges, NoChallenges
from services.router.config_watch import ConfigWatcher
from services.router.material import MaterialLoader
from services.router.proxy import SNI_ATTRIBUTE, Connections, HttpsProxy, PlainHttp
from services.router.sni_table import SniTable
from services.router.status import StatusReporter, ensure_status_stream
from services.router.tls import certificate_context, listening_context
from services.router.upstreams import Upstreams
from services.router_key import load_router_private_key
from services.subjects import Subjects, router_id_token
from services.telemetry import router_metrics

log = logging.getLogger("certplane.router")


@dataclass(frozen=True)
class RouterOptions:
    router_id: str = ""
    host: str = "127.0.0.1"
    https_port: int = 8443
    http_port: int = 8080  # -1: no plain-HTTP listener
    upstreams: list[str] = field(default_factory=list)
    drain_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    heartbeat: float = 5.0
    tls_contexts: int = 2_000
    ready_file: str = ""


def default_router_id(https_port: int) -> str:
    return router_id_token(f"{socket.gethostname()}-{https_port}")


class Router:
    def __init__(
        self, settings: Settings, options: RouterOptions, challenges: Challenges | None = None
    ) -> None:
        self.settings, self.options = settings, options
        self.upstreams = Upstreams.parse(options.upstreams)
        self.table = SniTable(certificate_context, contexts=options.tls_contexts)
        self.loader = MaterialLoader(load_router_private_key(settings))
        self.challenges = challenges or NoChallenges()
        self.connections = Connections()
        self.addresses: list[str] = []
        self.started_at = dt.datetime.now(dt.UTC)
        self.router_id = options.router_id
        self.https_port = options.https_port

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        """Pick the certificate by SNI: exact name, then the wildcard one label up; else an
        unrecognized_name alert (never a default certificate: it would be another app's)."""
        route = self.table.lookup(name) if name else None
        if route is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        try:
            sslobj.context = self.table.context(route.material)
        except ssl.SSLError as e:
            log.error("cannot load the certificate for %s (%s)", name, e.reason)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        setattr(sslobj, SNI_ATTRIBUTE, name)
        return None

    def status(self, state: RouterState) -> RouterStatus:
        if state is RouterState.STARTING and self.watcher.synced.is_set():
            state = RouterState.SERVING
        return RouterStatus(
            router_id=self.router_id,
            addresses=self.addresses,
            state=state,
            position=self.watcher.position if self.watcher.synced.is_set() else 0,
            hostnames=len(self.table),
            nacks=sorted(self.watcher.nacks.values(), key=lambda n: n.hostname),
            started_at=self.started_at,
            sent_at=dt.datetime.now(dt.UTC),
            heartbeat_seconds=self.options.heartbeat,
        )

    async def run(self, stop: asyncio.Event) -> None:
        s, o = self.settings, self.options
        subjects = Subjects(s.prefix)
        watcher_ref: list[ConfigWatcher] = []

        async def reconnected() -> None:
            log.info("NATS reconnected: resyncing the config")
            if watcher_ref:
                watcher_ref[0].resync()

        nc = await connect_nats(s.nats_url, "certplane-router", reconnected_cb=reconnected)
        tasks: list[asyncio.Task[None]] = []
        servers: list[asyncio.Server] = []
        try:
            await ensure_status_stream(nc, subjects, s.router_status_stream)
            servers = await self._listen()
            self.router_id = self.router_id or default_router_id(self.https_port)
            reporter = StatusReporter(
                nc, subjects.router_status(self.router_id), self.status, heartbeat=o.heartbeat
            )
            self.watcher = ConfigWatcher(
                nc.jetstream(), s.router_bucket, self.table, self.loader, reporter.changed
            )
            watcher_ref.append(self.watcher)
            watcher = self.watcher
            add_readiness_check(
                lambda: (
                    "draining: finishing requests in flight before it stops"
                    if self.connections.draining
                    else None
                    if watcher.synced.is_set()
                    else "the first full config from ROUTER_CONFIG is not applied yet"
                )
            )
            router_metrics(
                lambda: watcher.position if watcher.synced.is_set() else 0,
                lambda: len(self.table),
                lambda: len(watcher.nacks),
                lambda: len(self.connections.open),
            )
            tasks.append(asyncio.create_task(self.watcher.run(stop)))
            tasks.append(asyncio.create_task(reporter.run(stop)))
            self._write_ready_file()
            log.info("router %s listening on %s", self.router_id, " ".join(self.addresses))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watcher.synced.wait(), 30)
            await stop.wait()
            log.info("router %s stopping: draining connections", self.router_id)
            await reporter.publish(RouterState.STOPPING)
            for server in servers:
                server.close()
            cut = await self.connections.drain(o.drain_timeout)
            if cut:
                log.warning("closed %d connection(s) still busy after %.0fs", cut, o.drain_timeout)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)

    async def _listen(self) -> list[asyncio.Server]:
        o = self.options
        proxy = HttpsProxy(
            self.table, self.upstreams, self.connections, keepalive_timeout=o.keepalive_timeout
        )
        https = await asyncio.start_server(
            proxy, o.host, o.https_port, ssl=listening_context(self._sni),
            ssl_handshake_timeout=10.0, reuse_address=True,
        )  # fmt: skip
        self.https_port = https_port = https.sockets[0].getsockname()[1]
        servers = [https]
        self.addresses = [f"https://{_hostport(o.host, https_port)}"]
        if o.http_port >= 0:
            plain = PlainHttp(
                self.challenges, self.connections,
                https_port=https_port, keepalive_timeout=o.keepalive_timeout,
            )  # fmt: skip
            http = await asyncio.start_server(plain, o.host, o.http_port, reuse_address=True)
            servers.append(http)
            port = http.sockets[0].getsockname()[1]
            self.addresses.append(f"http://{_hostport(o.host, port)}")
        return servers

    def _write_ready_file(self) -> None:
        if not self.options.ready_file:
            return
        path = Path(self.options.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"router_id": self.router_id, "addresses": self.addresses}))
        os.replace(tmp, path)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
