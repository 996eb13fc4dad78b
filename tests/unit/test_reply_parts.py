"""Splitting a reply that outgrows one NATS message."""

from __future__ import annotations

from services.reply_parts import PART_HEADER, split


def test_a_reply_that_fits_is_one_message_without_headers() -> None:
    assert split(b"x" * 1000, 1000) == [(None, b"x" * 1000)]


def test_a_larger_reply_is_numbered_parts_each_within_the_limit() -> None:
    payload = bytes(range(256)) * 40  # 10,240 bytes
    parts = split(payload, 2_000)
    assert [h[PART_HEADER] for h, _ in parts if h] == [f"{i}/7" for i in range(1, 8)]
    assert all(len(data) + 512 <= 2_000 for _, data in parts)
    assert b"".join(data for _, data in parts) == payload
