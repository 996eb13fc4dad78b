"""The router's pure parts: SNI candidates, HTTP/1.1 framing, convergence, material checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from events.endpoint import EndpointType
from events.router import Nack, RouterConfigEntry, RouterState, RouterStatus
from services.devcerts import DevCA
from services.domain.convergence import is_live, not_applied
from services.domain.key_envelope import RouterSealer, public_bytes
from services.router.http11 import (
    Framing,
    HttpError,
    read_head,
    relay_body,
    request_framing,
    response_framing,
)
from services.router.material import MaterialLoader, Unloadable
from services.router.sni_table import SniTable, candidates
from services.router.upstreams import parse_upstream


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.example.com", ("www.example.com", "*.example.com")),
        ("WWW.Example.COM.", ("www.example.com", "*.example.com")),
        ("example.com", ("example.com", "*.com")),
        ("localhost", ("localhost",)),
        ("*.example.com", ("*.example.com",)),  # a client asking for a wildcard gets no match
    ],
)
def test_sni_candidates_are_the_name_then_one_wildcard_label_up(name, expected) -> None:
    assert candidates(name) == expected


def _head(raw: bytes):
    async def parse():
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_head(reader)

    return asyncio.run(parse())


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         400),  # both framings: the classic smuggling vector
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
)  # fmt: skip
def test_ambiguous_request_framing_is_refused(raw: bytes, status: int) -> None:
    head = _head(raw)
    with pytest.raises(HttpError) as refused:
        request_framing(head)
    assert refused.value.status == status


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # whitespace before the colon
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obsolete line folding
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ],
)
def test_malformed_header_lines_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpError) as refused:
        _head(raw)
    assert refused.value.status == 400


def test_response_framing_follows_rfc_9112() -> None:
    head = _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert response_framing(head, "GET", 200) == Framing("length", 5)
    assert response_framing(head, "HEAD", 200).kind == "none"
    assert response_framing(_head(b"HTTP/1.1 204 No Content\r\n\r\n"), "GET", 204).kind == "none"
    assert response_framing(_head(b"HTTP/1.1 200 OK\r\n\r\n"), "GET", 200).kind == "close"


def test_a_chunked_body_is_relayed_byte_for_byte_with_its_trailers() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n"

    class Sink:
        data = b""

        def write(self, chunk: bytes) -> None:
            Sink.data += chunk

        async def drain(self) -> None:
            return None

    async def relay() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(body + b"GET /next")
        await relay_body(Framing("chunked"), reader, Sink())  # type: ignore[arg-type]

    asyncio.run(relay())
    assert Sink.data == body  # and nothing of the next request


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("shop", "write APP=URL"),
        ("shop=https://x", "must be http://"),
        ("shop=ftp://x", "must be http://"),
    ],
)
def test_bad_upstream_flags_say_what_to_write(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_upstream(text)
    assert parse_upstream("*=echo")[1].is_echo


NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def status(router_id: str, position: int, **kw) -> RouterStatus:
    values = dict(router_id=router_id, addresses=[], state=RouterState.SERVING,
                  position=position, hostnames=1, started_at=NOW, sent_at=NOW)  # fmt: skip
    values.update(kw)
    return RouterStatus(**values)  # type: ignore[arg-type]


def test_a_router_is_live_for_three_heartbeats_and_not_while_stopping() -> None:
    s = status("a", 5, heartbeat_seconds=5.0)
    assert is_live(s, NOW - dt.timedelta(seconds=14), NOW)
    assert not is_live(s, NOW - dt.timedelta(seconds=16), NOW)
    assert not is_live(status("a", 5, state=RouterState.STOPPING), NOW, NOW)


def test_not_applied_names_routers_behind_starting_or_refusing() -> None:
    nack = Nack(hostname="www.x.test", position=7, reason="bad PEM")
    behind = not_applied(
        [status("ok", 9), status("late", 6), status("new", 9, state=RouterState.STARTING),
         status("refused", 9, nacks=[nack]), status("old-nack", 9, nacks=[
             Nack(hostname="y", position=3, reason="r")])],
        7,
    )  # fmt: skip
    assert [(b.router_id, b.reason) for b in behind] == [
        ("late", "at position 6"),
        ("new", "at position 9"),
        ("refused", "refused it (www.x.test: bad PEM)"),
    ]


@pytest.fixture(scope="module")
def issued():
    ca = DevCA.create("router unit")
    return ca, ca.leaf("www.shop.test"), ca.leaf("other.shop.test")


def entry_for(leaf, chain: bytes, key_pem: bytes, router_public: bytes) -> RouterConfigEntry:
    from services.router.material import hashes

    sealer = RouterSealer(os.urandom(32), router_public)
    seal = sealer.seal(key_pem, key_id="k1", derivation_secret=os.urandom(32))
    return RouterConfigEntry(
        hostname="www.shop.test", app="shop", endpoint="e", endpoint_type=EndpointType.SNI,
        chain_pem=chain.decode(), fingerprint_sha256=leaf.cert.fingerprint(hashes.SHA256()).hex(),
        key=seal, position=3,
    )  # fmt: skip


def test_material_loads_and_serves_a_context(issued) -> None:
    ca, leaf, _ = issued
    router_key = X25519PrivateKey.generate()
    loader = MaterialLoader(router_key)
    chain = leaf.cert_pem + ca.intermediate.cert_pem
    route = loader.route(
        entry_for(leaf, chain, leaf.key_pem, public_bytes(router_key.public_key()))
    )
    from services.router.tls import certificate_context

    table = SniTable(certificate_context, contexts=1)
    table.put(route)
    assert table.lookup("WWW.shop.test") == route and table.lookup("shop.test") is None
    assert "key_pem" not in repr(route.material)  # never printed


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong key", "does not match the chain's leaf"),
        ("other router", "sealed to router key"),
        ("garbage chain", "not valid PEM"),
        ("no key", "no private key"),
    ],
)
def test_material_that_cannot_be_served_is_refused_with_a_reason(issued, case, reason) -> None:
    ca, leaf, other = issued
    router_key = X25519PrivateKey.generate()
    public = public_bytes(router_key.public_key())
    chain = leaf.cert_pem + ca.intermediate.cert_pem
    match case:
        case "wrong key":
            entry = entry_for(leaf, chain, other.key_pem, public)
        case "other router":
            entry = entry_for(leaf, chain, leaf.key_pem,
                              public_bytes(X25519PrivateKey.generate().public_key()))  # fmt: skip
        case "garbage chain":
            entry = entry_for(leaf, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                              leaf.key_pem, public)  # fmt: skip
        case _:
            import msgspec

            entry = msgspec.structs.replace(
                entry_for(leaf, chain, leaf.key_pem, public), key=None, problem="shredded"
            )
    with pytest.raises(Unloadable, match=reason) as refused:
        MaterialLoader(router_key).material(entry)
    assert "PRIVATE KEY" not in refused.value.reason
