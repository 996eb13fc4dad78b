"""Arrays packed into one parameter come back from PostgreSQL as the same arrays: empty,
a lone empty string, JSON with every escape, and a separator smuggled in is refused."""

from __future__ import annotations

import asyncpg
import pytest

from services.storage import packed


@pytest.fixture
async def conn(db_url: str):
    c = await asyncpg.connect(db_url)
    yield c
    await c.close()


@pytest.mark.parametrize(
    "values",
    [[], [""], ["", ""], ["a"], ["a", "", "b"], ['{"x":"\\u001f\\n\\"é"}', "-----BEGIN\r\n"]],
)
async def test_text_arrays_round_trip(conn: asyncpg.Connection, values: list[str]) -> None:
    assert await conn.fetchval(f"select {packed.text_array(1)}", packed.units(values)) == values


async def test_uuid_arrays_are_parsed_by_postgresql(conn: asyncpg.Connection) -> None:
    ids = ["6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5f", "00000000-0000-0000-0000-000000000000"]
    got = await conn.fetchval(f"select {packed.text_array(1, 'uuid')}", packed.units(ids))
    assert [str(u) for u in got] == ids
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await conn.fetchval(f"select {packed.text_array(1, 'uuid')}", "not-a-uuid")


@pytest.mark.parametrize("values", [[], [0], [1, -2, 2_147_483_647]])
async def test_integer_arrays_round_trip(conn: asyncpg.Connection, values: list[int]) -> None:
    got = await conn.fetchval(f"select {packed.integer_array(1)}", packed.integers(values))
    assert got == values


@pytest.mark.parametrize("count", [0, 1, 5])
async def test_byte_arrays_round_trip(conn: asyncpg.Connection, count: int) -> None:
    values = [bytes([n]) * 31 + b"\x00" for n in range(count)]  # a zero byte at each end
    got = await conn.fetchval(f"select {packed.bytea_array(1)}", packed.hex_values(values))
    assert got == values
    assert await conn.fetchval(f"select {packed.bytea_array(1)}", packed.hex_values([b""])) == [b""]


def test_a_value_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="unit separator"):
        packed.units(["fine", "smuggled\x1fvalue"])
