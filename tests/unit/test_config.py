"""Settings as messages show them."""

from __future__ import annotations

import pytest

from services.config import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://postgres@127.0.0.1:5432/certplane", "postgresql://postgres@127.0.0.1:5432/certplane"),
        ("nats://s3cr3t-token@bus:4222", "nats://***@bus:4222"),
        ("nats://user:hunter2@bus:4222", "nats://user:***@bus:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)  # fmt: skip
def test_urls_are_shown_without_passwords_or_nats_tokens(url: str, shown: str) -> None:
    assert redact(url) == shown
