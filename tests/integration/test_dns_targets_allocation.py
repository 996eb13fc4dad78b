"""DNS targets re-drawn on collisions, exactly as the log's order says, whether a batch looks
each first draw up or guesses that none is taken and lets the unique index check it (large
batches: rebuilds). Collisions of real 124-bit names do not happen, so the draws are forced
here: `dns_target` is replaced by a table of what each (seed, attempt) draws."""

from __future__ import annotations

import asyncpg
import pytest

from events.app import AppDestroyed
from events.domain import DomainAdded, DomainRemoved
from services.projectors import dns_targets
from services.projectors.dns_targets import DnsTargetsProjection
from services.storage.event_log import NO_METADATA, UNREAD_AT, StoredEvent

ZONE = "certplanedns.example"
SCHEMA = "dns_alloc"


@pytest.fixture
async def conn(db_url: str):
    c = await asyncpg.connect(db_url)
    await c.execute(f'create schema "{SCHEMA}"')
    for statement in DnsTargetsProjection(ZONE).ddl(SCHEMA):
        await c.execute(statement)
    yield c
    await c.close()


@pytest.fixture(autouse=True)
def forced_draws(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], str]:
    """(seed, attempt) -> target; unlisted draws are `<seed>-<attempt>`."""
    draws: dict[tuple[str, int], str] = {}
    monkeypatch.setattr(
        dns_targets, "dns_target", lambda seed, attempt, zone: draws.get((seed, attempt),
                                                                          f"{seed}-{attempt}")
    )  # fmt: skip
    return draws


Step = tuple[object, str]  # an event and the seed (its event id) its draws derive from


def added(host: str, seed: str) -> Step:
    return DomainAdded(app="shop", hostname=host), seed


def removed(host: str) -> Step:
    return DomainRemoved(app="shop", hostname=host), ""


DESTROYED: Step = (AppDestroyed(app="shop"), "")


async def allocated(conn: asyncpg.Connection, guess: bool, *batches: list[Step]) -> dict[str, str]:
    """Each batch applied in its own transaction, positions counted from 1; the targets then."""
    projection = DnsTargetsProjection(ZONE)
    projection.guess_from = 0 if guess else 10**9  # type: ignore[misc]
    position = 0
    for batch in batches:
        events = []
        for event, seed in batch:
            position += 1
            events.append(StoredEvent(position, "app-shop", position, seed, "", 0, event,  # type: ignore[arg-type]
                                      NO_METADATA, UNREAD_AT))  # fmt: skip
        async with conn.transaction():
            await projection.apply(conn, SCHEMA, events, position)
    return dict(await conn.fetch(f'select hostname, target from "{SCHEMA}".dns_targets'))


GUESS = pytest.mark.parametrize("guess", [True, False], ids=["guessing", "looking-up"])


@GUESS
async def test_a_first_draw_taken_by_an_earlier_batch_is_drawn_again(conn, forced_draws, guess):
    forced_draws[("b", 0)] = "a-0"
    targets = await allocated(conn, guess, [added("one.test", "a")], [added("two.test", "b")])
    assert targets == {"one.test": "a-0", "two.test": "b-1"}


@GUESS
async def test_a_target_freed_earlier_in_the_batch_is_taken_again(conn, forced_draws, guess):
    forced_draws[("b", 0)] = "a-0"
    targets = await allocated(
        conn, guess, [added("one.test", "a")], [removed("one.test"), added("two.test", "b")]
    )
    assert targets == {"two.test": "a-0"}


@GUESS
async def test_a_target_freed_later_in_the_batch_was_still_taken(conn, forced_draws, guess):
    forced_draws[("b", 0)] = "a-0"
    targets = await allocated(
        conn, guess, [added("one.test", "a")], [added("two.test", "b"), removed("one.test")]
    )
    assert targets == {"two.test": "b-1"}


@GUESS
async def test_a_draw_held_by_a_domain_added_and_removed_in_the_batch_still_counts(
    conn, forced_draws, guess
):
    """two.test collides with the table and is re-drawn; three.test collides with that
    re-draw while two.test holds it; two.test goes again. Guessing, two.test would keep its
    first draw and never be inserted, so the index could not tell."""
    forced_draws[("b", 0)] = "a-0"
    forced_draws[("c", 0)] = "b-1"
    later = [added("two.test", "b"), added("three.test", "c"), removed("two.test")]
    targets = await allocated(conn, guess, [added("one.test", "a")], later)
    assert targets == {"one.test": "a-0", "three.test": "c-1"}


@GUESS
async def test_a_destroyed_apps_targets_are_free_after_its_destruction(conn, forced_draws, guess):
    forced_draws[("c", 0)] = "a-0"
    forced_draws[("d", 0)] = "b-0"
    first = [added("one.test", "a"), added("two.test", "b")]
    later = [added("three.test", "c"), DESTROYED, added("four.test", "d")]
    assert await allocated(conn, guess, first, later) == {"four.test": "b-0"}
