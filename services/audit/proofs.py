"""Inclusion and consistency proofs computed from the log, each range's root streamed
(memory O(log n)); a proof is checked against the signed root before anyone sees it."""

from __future__ import annotations

import asyncpg

from events.audit import InclusionProof, TreeHead
from services.domain.merkle import (
    Frontier,
    Range,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


class ProofFailed(Exception):
    pass


async def _range_root(conn: asyncpg.Connection, span: Range) -> bytes:
    """The root over leaves [lo, hi), i.e. positions lo+1..hi."""
    lo, hi = span
    frontier = Frontier()
    async with conn.transaction(readonly=True):
        query = "select hash from events where position > $1 and position <= $2 order by position"
        async for record in conn.cursor(query, lo, hi, prefetch=10_000):
            frontier.append(leaf_hash(bytes(record[0])))
    if frontier.size != hi - lo:
        raise ProofFailed(f"positions {lo + 1}–{hi} are not all in the log any more")
    return frontier.root()


async def inclusion_proof(
    conn: asyncpg.Connection, position: int, head: TreeHead
) -> InclusionProof:
    if not 1 <= position <= head.size:
        raise ProofFailed(f"position {position} is not covered by a checkpoint of size {head.size}")
    event_hash = await conn.fetchval("select hash from events where position = $1", position)
    if event_hash is None:
        raise ProofFailed(f"there is no event at position {position}")
    leaf = leaf_hash(bytes(event_hash))
    proof = [await _range_root(conn, r) for r in inclusion_ranges(position - 1, head.size)]
    if not verify_inclusion(leaf, position - 1, head.size, proof, bytes.fromhex(head.root_hash)):
        raise ProofFailed(
            f"the log's event at position {position} is not the one the checkpoint of size "
            f"{head.size} signed: the log was rewritten (run `certplane audit:verify`)"
        )
    return InclusionProof(
        position=position, event_hash=bytes(event_hash).hex(), leaf_hash=leaf.hex(),
        proof=[p.hex() for p in proof], checkpoint=head,
    )  # fmt: skip


async def consistency_proof(conn: asyncpg.Connection, old: TreeHead, new: TreeHead) -> list[bytes]:
    if old.size > new.size:
        old, new = new, old
    proof = (
        []
        if old.size == new.size
        else [await _range_root(conn, r) for r in consistency_ranges(old.size, new.size)]
    )
    if not verify_consistency(
        old.size, new.size, bytes.fromhex(old.root_hash), bytes.fromhex(new.root_hash), proof
    ):
        raise ProofFailed(
            f"the checkpoint of size {new.size} does not extend the one of size {old.size}: "
            "the log was forked or rewritten between them"
        )
    return proof
