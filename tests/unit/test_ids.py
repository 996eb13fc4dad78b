"""The fast UUID helpers agree with `uuid.UUID` on every input, good or bad."""

from __future__ import annotations

import random
import uuid

import pytest

from services.domain.ids import canonical_uuid, random_uuid, uuid_bytes

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
