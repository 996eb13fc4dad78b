"""HTTP/1.1 message framing for the proxy (RFC 9112): heads, body lengths, relaying bodies.

Strict where ambiguity would let one request hide inside another (request smuggling):
Transfer-Encoding with Content-Length, differing Content-Lengths, obsolete line folding and
whitespace before a header's colon are refused with 400.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
COPY_CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
     "proxy-authorization", "te", "trailer", "upgrade"}
)  # fmt: skip
# Transfer-Encoding is hop-by-hop too, but bodies are relayed with their framing unchanged.


class HttpError(Exception):
    """A request the router answers itself with `status` (and closes the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Head:
    start: str  # the request line or the status line
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` header, lowercased."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the peer closed cleanly between messages."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HttpError(400, "the connection closed in the middle of a message head") from e
    except asyncio.LimitOverrunError as e:
        raise HttpError(431, f"the message head is larger than {MAX_HEAD} bytes") from e
    lines = data[:-4].decode("latin-1").split("\r\n")
    while lines and not lines[0]:  # RFC 9112 2.2: ignore empty lines before a request
        lines.pop(0)
    if not lines:
        raise HttpError(400, "an empty message head")
    head = Head(lines[0])
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise HttpError(400, f"a malformed header line: {line[:80]!r}")
        head.headers.append((name, value.strip()))
    return head


@dataclass(frozen=True)
class Framing:
    kind: str  # "none" | "length" | "chunked" | "close"
    length: int = 0


NO_BODY = Framing("none")


def request_framing(head: Head) -> Framing:
    encodings = head.tokens("transfer-encoding")
    lengths = head.get_all("content-length")
    if encodings:
        if lengths:
            raise HttpError(400, "both Transfer-Encoding and Content-Length were sent")
        if encodings != {"chunked"}:
            raise HttpError(501, "only the chunked transfer coding is supported")
        return Framing("chunked")
    return _length(lengths) or NO_BODY


def response_framing(head: Head, method: str, status: int) -> Framing:
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return NO_BODY
    if "chunked" in head.tokens("transfer-encoding"):
        return Framing("chunked")
    return _length(head.get_all("content-length")) or Framing("close")


def _length(values: list[str]) -> Framing | None:
    if not values:
        return None
    distinct = {v.strip() for value in values for v in value.split(",")}
    if len(distinct) != 1 or not (only := distinct.pop()).isdigit():
        raise HttpError(400, f"an invalid Content-Length: {', '.join(values)[:80]}")
    return Framing("length", int(only))


async def relay_body(
    framing: Framing, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy one body from `reader` to `writer`, framed as it came."""
    if framing.kind == "length":
        left = framing.length
        while left:
            chunk = await reader.read(min(left, COPY_CHUNK))
            if not chunk:
                raise HttpError(400, "the body ended before its Content-Length")
            writer.write(chunk)
            left -= len(chunk)
            await writer.drain()
    elif framing.kind == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise HttpError(400, "a malformed chunk size") from e
            writer.write(line)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(b"\r\n")
                break
            writer.write(await reader.readexactly(size + 2))
            await writer.drain()
    elif framing.kind == "close":
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    await writer.drain()


async def discard_body(framing: Framing, reader: asyncio.StreamReader) -> int:
    """Read and drop a body; returns its size (for the echo upstream)."""
    sink = _Counter()
    await relay_body(framing, reader, sink)  # type: ignore[arg-type]
    return sink.size


class _Counter:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    async def drain(self) -> None:
        return None


def simple_response(
    status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None, close: bool = False,
) -> bytes:  # fmt: skip
    head = Head(f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}")
    head.headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    head.headers += headers or []
    if close:
        head.headers.append(("Connection", "close"))
    return head.encode() + body


REASONS = {
    200: "OK", 301: "Moved Permanently", 308: "Permanent Redirect", 400: "Bad Request",
    404: "Not Found", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
