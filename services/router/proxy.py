"""The router's two listeners: HTTPS (TLS terminated by SNI, proxied to the app's upstream
over HTTP/1.1) and plain HTTP (ACME HTTP-01 answers, a redirect to HTTPS for the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass, field

from services.router.challenges import Challenges
from services.router.http11 import (
    HOP_BY_HOP,
    Framing,
    Head,
    HttpError,
    discard_body,
    read_head,
    relay_body,
    request_framing,
    response_framing,
    simple_response,
)
from services.router.sni_table import SniTable
from services.router.upstreams import Upstream, Upstreams

log = logging.getLogger("certplane.router.proxy")
SNI_ATTRIBUTE = "certplane_sni"  # set on the SSLObject by the SNI callback
ACME_PREFIX = "/.well-known/acme-challenge/"
CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 60.0


@dataclass
class ClientState:
    """Per client connection: what its handshake chose, and its upstream connection."""

    sni: str | None = None
    peer: str = ""
    port: int = 443
    upstream: tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream[2].close()
            self.upstream = None


@dataclass(eq=False)
class Connection:
    writer: asyncio.StreamWriter
    idle: bool = True


@dataclass
class Connections:
    """Open client connections, so a shutdown can close idle ones and wait for busy ones."""

    open: set[Connection] = field(default_factory=set)
    draining: bool = False

    async def drain(self, seconds: float) -> int:
        """Close idle connections now, busy ones when they finish or after `seconds`;
        returns how many were cut off."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.open and loop.time() < deadline:
            for c in [c for c in self.open if c.idle]:
                c.writer.close()
            await asyncio.sleep(0.05)
        cut = len(self.open)
        for c in list(self.open):
            c.writer.close()
        return cut


def _host_only(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _request_line(head: Head) -> tuple[str, str, str]:
    parts = head.start.split(" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise HttpError(400, f"a malformed request line: {head.start[:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, f"{version} is not supported: speak HTTP/1.1")
    return method, target, version


def _keep_alive(head: Head, version: str) -> bool:
    tokens = head.tokens("connection")
    return "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens


def _end_to_end(head: Head) -> list[tuple[str, str]]:
    """Headers without the hop-by-hop ones (and those the Connection header names)."""
    named = head.tokens("connection")
    return [(k, v) for k, v in head.headers if k.lower() not in HOP_BY_HOP | named]


class HttpListener:
    """Common connection loop: keep-alive, idle timeout, draining, error replies."""

    def __init__(self, connections: Connections, *, keepalive_timeout: float = 75.0) -> None:
        self.connections = connections
        self.keepalive_timeout = keepalive_timeout

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        self.connections.open.add(conn)
        state = self.new_state(writer)
        try:
            while not self.connections.draining:
                conn.idle = True
                try:
                    head = await asyncio.wait_for(read_head(reader), self.keepalive_timeout)
                except TimeoutError:
                    break
                if head is None:
                    break
                conn.idle = False
                try:
                    if not await self.handle(head, reader, writer, state):
                        break
                except HttpError as e:
                    writer.write(simple_response(e.status, (e.message + "\n").encode(), close=True))
                    await writer.drain()
                    break
        except HttpError as e:
            with contextlib.suppress(Exception):
                writer.write(simple_response(e.status, (e.message + "\n").encode(), close=True))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self.connections.open.discard(conn)
            state.drop_upstream()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def new_state(self, writer: asyncio.StreamWriter) -> ClientState:
        return ClientState()

    async def handle(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: ClientState,
    ) -> bool:
        raise NotImplementedError


class HttpsProxy(HttpListener):
    def __init__(
        self,
        table: SniTable,
        upstreams: Upstreams,
        connections: Connections,
        *,
        keepalive_timeout: float = 75.0,
    ) -> None:
        super().__init__(connections, keepalive_timeout=keepalive_timeout)
        self.table, self.upstreams = table, upstreams

    def new_state(self, writer: asyncio.StreamWriter) -> ClientState:
        sslobj = writer.get_extra_info("ssl_object")
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        return ClientState(
            sni=getattr(sslobj, SNI_ATTRIBUTE, None),
            peer=peer[0] if peer else "",
            port=local[1] if local else 443,
        )

    async def handle(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: ClientState,
    ) -> bool:
        method, target, version = _request_line(head)
        framing = request_framing(head)
        host = head.get("host")
        if host is None:
            raise HttpError(400, "the request has no Host header")
        route = self.table.lookup(_host_only(host))
        by_sni = self.table.lookup(state.sni or "")
        if route is None or by_sni is None or route.app != by_sni.app:
            # never let one TLS connection reach another app than the one its SNI chose
            raise HttpError(421, f"{_host_only(host)} is not served on this connection")
        keep = _keep_alive(head, version)
        upstream = self.upstreams.for_app(route.app)
        headers = self._forwarded(head, state.peer, state.port)
        if upstream is None:
            await discard_body(framing, reader)
            raise HttpError(502, f"no upstream is configured for app {route.app}")
        if upstream.is_echo:
            size = await discard_body(framing, reader)
            body = json.dumps(
                {"app": route.app, "endpoint": route.endpoint, "method": method,
                 "target": target, "headers": [f"{k}: {v}" for k, v in headers],
                 "body_bytes": size}, indent=1,
            ).encode()  # fmt: skip
            response = simple_response(
                200, body + b"\n", content_type="application/json", close=not keep
            )
            writer.write(response)
            await writer.drain()
            return keep
        request = Head(f"{method} {target} HTTP/1.1", headers)
        return await self._proxy(request, framing, reader, writer, upstream, state, keep=keep)

    def _forwarded(self, head: Head, peer: str, port: int) -> list[tuple[str, str]]:
        replaced = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-port"}
        headers = [(k, v) for k, v in _end_to_end(head) if k.lower() not in replaced]
        chain = [*head.get_all("x-forwarded-for"), peer]
        headers += [
            ("X-Forwarded-For", ", ".join(chain)),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Port", str(port)),
        ]
        return headers  # Transfer-Encoding stays: bodies are relayed with their framing

    async def _proxy(
        self,
        request: Head,
        framing: Framing,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: Upstream,
        state: ClientState,
        *,
        keep: bool,
    ) -> bool:
        method = request.start.split(" ", 1)[0]
        up_reader, up_writer = await self._upstream(upstream, state)
        try:
            up_writer.write(request.encode())
            await relay_body(framing, reader, up_writer)
            while True:
                response = await asyncio.wait_for(read_head(up_reader), RESPONSE_TIMEOUT)
                if response is None:
                    raise ConnectionResetError("the upstream closed the connection")
                status = int(response.start.split(" ")[1])
                if 100 <= status < 200 and status != 101:
                    writer.write(response.encode())  # 100 Continue and friends: pass along
                    continue
                break
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
            state.drop_upstream()
            status = 504 if isinstance(e, TimeoutError) else 502
            reason = f"the upstream {upstream.url} failed: {e or type(e).__name__}"
            raise HttpError(status, reason) from e
        body = response_framing(response, method, status)
        reusable = body.kind != "close" and "close" not in response.tokens("connection")
        keep = keep and body.kind != "close"
        out = Head(response.start, _end_to_end(response))
        if not keep:
            out.headers.append(("Connection", "close"))
        writer.write(out.encode())
        await relay_body(body, up_reader, writer)
        if not reusable:
            state.drop_upstream()
        return keep

    async def _upstream(
        self, upstream: Upstream, state: ClientState
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """This client connection's upstream connection (reused while keep-alive)."""
        if state.upstream is not None:
            url, r, w = state.upstream
            if url == upstream.url and not r.at_eof() and not w.is_closing():
                return r, w
            state.drop_upstream()
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            raise HttpError(502, f"cannot connect to the upstream {upstream.url} ({e})") from e
        state.upstream = (upstream.url, r, w)
        return r, w


class PlainHttp(HttpListener):
    """Port 80's job: ACME HTTP-01 answers; everything else is redirected to HTTPS."""

    def __init__(
        self,
        challenges: Challenges,
        connections: Connections,
        *,
        https_port: int,
        keepalive_timeout: float = 75.0,
    ) -> None:
        super().__init__(connections, keepalive_timeout=keepalive_timeout)
        self.challenges, self.https_port = challenges, https_port

    async def handle(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: ClientState,
    ) -> bool:
        _, target, version = _request_line(head)
        await discard_body(request_framing(head), reader)
        keep = _keep_alive(head, version)
        if target.startswith(ACME_PREFIX):
            answer = self.challenges.get(target[len(ACME_PREFIX) :])
            if answer is None:
                response = simple_response(404, b"no such ACME challenge token\n", close=not keep)
            else:
                response = simple_response(200, answer.encode(), close=not keep)
        else:
            host = head.get("host")
            if not host:
                raise HttpError(400, "the request has no Host header")
            port = "" if self.https_port == 443 else f":{self.https_port}"
            path = target if target.startswith("/") else "/"
            location = f"https://{_host_only(host)}{port}{path}"
            response = simple_response(
                308, f"Redirecting to {location}\n".encode(), headers=[("Location", location)],
                close=not keep,
            )  # fmt: skip
        writer.write(response)
        await writer.drain()
        return keep
