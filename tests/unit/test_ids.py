"""The fast UUID helpers agree with `uuid.UUID` on every input, good or bad."""

from __future__ import annotations

import random
import uuid

import pytest

from services.domain.ids import TimeOrderedIds, canonical_uuid, random_uuid, uuid_bytes

U = uuid.UUID("6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5f")


@pytest.mark.parametrize(
    "text",
    [
        str(U),
        str(U).upper(),
        U.hex,
        "{" + str(U) + "}",
        "urn:uuid:" + str(U),
        "6f1c2d4e8-a9b-4c3d-9e2f-0a1b2c3d4e5f",  # hyphens misplaced: uuid.UUID accepts it too
    ],
)
def test_accepted_forms_give_uuid_s_bytes_and_text(text: str) -> None:
    assert uuid_bytes(text) == uuid.UUID(text).bytes
    assert canonical_uuid(text) == str(uuid.UUID(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a uuid",
        "6f1c2d4e 8a9b 4c3d 9e2f 0a1b2c3d4e5f",  # 36 characters, spaces for hyphens
        "6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5g",  # 36 characters, one not hex
        "6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5",  # one digit short
        "6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5f0",  # one digit long
        "6f1c2d4e--8a9b-4c3d-9e2f-0a1b2c3d4e5",  # five hyphens, 31 digits
    ],
)
def test_refused_forms_are_refused_as_uuid_refuses_them(text: str) -> None:
    with pytest.raises(ValueError):
        uuid.UUID(text)
    with pytest.raises(ValueError):
        uuid_bytes(text)
    with pytest.raises(ValueError):
        canonical_uuid(text)


def test_random_ids_are_canonical_version_4_uuids() -> None:
    rng = random.Random(7)
    ids = [random_uuid(rng) for _ in range(1000)]
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_time_ordered_ids_are_version_7_uuids_that_only_increase() -> None:
    """Within a millisecond (a counter), across 4,096 of them in one (the next millisecond
    is borrowed), and when the clock steps back: always larger than the last, as text and
    as UUIDs, and carrying the time they were made."""
    now = [1_800_000_000_123_000_000]  # ns
    ids = TimeOrderedIds(random.Random(7), clock=lambda: now[0])
    made = [ids() for _ in range(5_000)]  # all in one millisecond
    now[0] -= 10_000_000_000  # the clock steps back 10 s
    made += [ids() for _ in range(10)]
    now[0] += 60_000_000_000
    made += [ids() for _ in range(10)]
    parsed = [uuid.UUID(m) for m in made]
    assert all(str(u) == m for u, m in zip(parsed, made, strict=True))  # canonical text
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert made == sorted(made) and len(set(made)) == len(made)
    assert [u.int for u in parsed] == sorted(u.int for u in parsed)
    assert parsed[0].int >> 80 == 1_800_000_000_123  # Unix milliseconds
    assert parsed[4_999].int >> 80 == 1_800_000_000_124  # 4,096 in one: the next one borrowed
    assert parsed[-1].int >> 80 == 1_800_000_050_123
