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


class Log:
    def __init__(self) -> None:
        self.position = 0

    def __call__(self, event: object, seed: str = "") -> StoredEvent:
        self.position += 1
        return StoredEvent(self.position, "app-shop", self.position, seed, "", 0, event,  # type: ignore[arg-type]
                           NO_METADATA, UNREAD_AT)  # fmt: skip


def added(host: str) -> DomainAdded:
    return DomainAdded(app="shop", hostname=host)


def removed(host: str) -> DomainRemoved:
    return DomainRemoved(app="shop", hostname=host)


async def targets(conn: asyncpg.Connection) -> dict[str, str]:
    return dict(await conn.fetch(f'select hostname, target from "{SCHEMA}".dns_targets'))


async def run(conn: asyncpg.Connection, guess: bool, *batches: list[StoredEvent]) -> None:
    projection = DnsTargetsProjection(ZONE)
    projection.guess_from = 0 if guess else 10**9  # type: ignore[misc]
    for batch in batches:
        async with conn.transaction():
            await projection.apply(conn, SCHEMA, batch, batch[-1].position)


GUESS = pytest.mark.parametrize("guess", [True, False], ids=["guessing", "looking-up"])


@GUESS
async def test_a_first_draw_taken_by_an_earlier_batch_is_drawn_again(conn, forced_draws, guess):
    log = Log()
    forced_draws[("b", 0)] = "a-0"
    await run(conn, guess, [log(added("one.test"), "a")], [log(added("two.test"), "b")])
    assert await targets(conn) == {"one.test": "a-0", "two.test": "b-1"}


@GUESS
async def test_a_target_freed_earlier_in_the_batch_is_taken_again(conn, forced_draws, guess):
    log = Log()
    forced_draws[("b", 0)] = "a-0"
    await run(
        conn, guess,
        [log(added("one.test"), "a")],
        [log(removed("one.test")), log(added("two.test"), "b")],
    )  # fmt: skip
    assert await targets(conn) == {"two.test": "a-0"}


@GUESS
async def test_a_target_freed_later_in_the_batch_was_still_taken(conn, forced_draws, guess):
    log = Log()
    forced_draws[("b", 0)] = "a-0"
    await run(
        conn, guess,
        [log(added("one.test"), "a")],
        [log(added("two.test"), "b"), log(removed("one.test"))],
    )  # fmt: skip
    assert await targets(conn) == {"two.test": "b-1"}


@GUESS
async def test_a_draw_held_by_a_domain_added_and_removed_in_the_batch_still_counts(
    conn, forced_draws, guess
):
    """two.test collides with the table and is re-drawn; three.test collides with that
    re-draw while two.test holds it; two.test goes again. Guessing, two.test would keep its
    first draw and never be inserted, so the index could not tell."""
    log = Log()
    forced_draws[("b", 0)] = "a-0"
    forced_draws[("c", 0)] = "b-1"
    await run(
        conn, guess,
        [log(added("one.test"), "a")],
        [log(added("two.test"), "b"), log(added("three.test"), "c"), log(removed("two.test"))],
    )  # fmt: skip
    assert await targets(conn) == {"one.test": "a-0", "three.test": "c-1"}


@GUESS
async def test_a_destroyed_apps_targets_are_free_after_its_destruction(conn, forced_draws, guess):
    log = Log()
    forced_draws[("c", 0)] = "a-0"
    forced_draws[("d", 0)] = "b-0"
    await run(
        conn, guess,
        [log(added("one.test"), "a"), log(added("two.test"), "b")],
        [log(added("three.test"), "c"), log(AppDestroyed(app="shop")), log(added("four.test"), "d")],
    )  # fmt: skip
    assert await targets(conn) == {"four.test": "b-0"}
