"""A projector refuses a batch whose positions are not exactly the next ones (invariant 5).

Batches are read `order by position` and positions are the log's primary key, so they
always increase strictly; what can go wrong is a hole (a position not visible yet)."""

from __future__ import annotations

import pytest

from services.projectors.runner import GapError, _check_dense


def rows(*positions: int) -> list[tuple[int]]:
    return [(p,) for p in positions]


def test_the_next_positions_pass() -> None:
    _check_dense(rows(8, 9, 10, 11), 7)  # type: ignore[arg-type]
    _check_dense([], 7)


@pytest.mark.parametrize(
    ("batch", "expected", "read"),
    [
        (rows(9, 10, 11), 8, 9),  # the first is missing
        (rows(8, 10, 11, 12), 9, 10),  # one inside, though the count would fit a later end
        (rows(8, 9, 10, 12), 11, 12),  # the last
    ],
)
def test_a_gap_stops_the_projector_and_names_it(batch, expected, read) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GapError, match=f"expected {expected}, read {read};"):
        _check_dense(batch, 7)
