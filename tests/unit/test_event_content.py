"""The hash chain and the writer MAC share one canonical encoding of an event, and the MAC
keeps its keyed states between events. Every hash and MAC already in a log must still
verify: both are pinned here to their definitions, written out byte by byte with the
standard library's `hmac`."""

from __future__ import annotations

import hashlib
import hmac
import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.domain.event_content import event_content
from services.domain.writer_mac import writer_mac
from services.storage.hash_chain import content_hash


def _lp(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def _fields(stream: str, event: str, command: str, index: int, type_: str, version: int,
            data: str) -> bytes:  # fmt: skip
    return (
        _lp(stream) + uuid.UUID(event).bytes + uuid.UUID(command).bytes
        + index.to_bytes(4, "big", signed=True) + _lp(type_)
        + version.to_bytes(4, "big", signed=True) + _lp(data)
    )  # fmt: skip


_text = st.text(max_size=300)
_event = st.tuples(
    _text, st.uuids().map(str), st.uuids().map(str), st.integers(0, 2**31 - 1), _text,
    st.integers(1, 1000), _text,
)  # fmt: skip


@given(key=st.binary(max_size=200), event=_event)
def test_the_writer_mac_is_hmac_sha256_of_the_fields(key: bytes, event: tuple) -> None:
    expected = hmac.new(
        key, b"certplane/writer-mac/v1" + _fields(*event), hashlib.sha256
    ).hexdigest()
    assert writer_mac(key, event_content(*event)) == expected


@given(event=_event, metadata=_text)
def test_the_content_hash_is_sha256_of_the_fields_and_the_metadata(
    event: tuple, metadata: str
) -> None:
    expected = hashlib.sha256(b"certplane-event-v1" + _fields(*event) + _lp(metadata)).digest()
    assert content_hash(event_content(*event), metadata) == expected


def test_the_mac_depends_on_the_key_when_one_key_is_reused_between_events() -> None:
    content = event_content(
        "app:shop", str(uuid.uuid4()), str(uuid.uuid4()), 0, "DomainAdded", 1, "{}"
    )
    first = [writer_mac(bytes([n]) * 32, content) for n in range(12)]  # more keys than cached
    again = [writer_mac(bytes([n]) * 32, content) for n in range(12)]
    assert first == again
    assert len(set(first)) == 12
