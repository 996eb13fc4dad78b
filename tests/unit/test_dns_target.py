"""DNS target names: stable across releases (a rebuild must give every domain its old name)."""

from __future__ import annotations

import random

import pytest

from services.domain.dns_target import (
    _ALPHABET,
    _SPACE,
    ADJECTIVES,
    NOUNS,
    dns_target,
    render,
    target_key,
)


@pytest.mark.parametrize(
    ("seed", "attempt", "expected"),
    [  # spelled by the first implementation: changing any of them renames users' DNS targets
        ("4f1c9a3e-0000-4000-8000-000000000001", 0, "shiny-orchid-xn2kofeufvmqb2k1vi66a1dw"),
        ("4f1c9a3e-0000-4000-8000-000000000001", 3, "radiant-pebble-9hx4gf5jtg1ytv9mtvlolhlu"),
        ("x", 15, "calm-sequoia-f3orrw481d0h23dx59hcd7fo"),
    ],
)
def test_targets_are_the_names_they_always_were(seed: str, attempt: int, expected: str) -> None:
    assert dns_target(seed, attempt, "certplanedns.example") == f"{expected}.certplanedns.example"


def _render_digit_by_digit(key: int, zone: str) -> str:
    rest, number = divmod(key, _SPACE)
    adjective, noun = divmod(rest, len(NOUNS))
    digits = ""
    for _ in range(24):
        number, index = divmod(number, 36)
        digits += _ALPHABET[index]
    return f"{ADJECTIVES[adjective]}-{NOUNS[noun]}-{digits}.{zone}"


def test_render_agrees_with_the_plain_base_36_spelling_on_every_kind_of_key() -> None:
    rng = random.Random(5)
    largest = len(ADJECTIVES) * len(NOUNS) * _SPACE - 1
    keys = [0, 1, 35, 36, 1295, 1296, 36**12 - 1, 36**12, _SPACE - 1, _SPACE, largest]
    keys += [rng.randrange(largest + 1) for _ in range(2000)]
    keys += [target_key(f"seed-{i}", i % 16) for i in range(500)]
    for key in keys:
        assert render(key, "z.example") == _render_digit_by_digit(key, "z.example"), key
