"""Operator decisions about projections, pure: what skipping a dead letter records."""

from __future__ import annotations

from dataclasses import dataclass

from events.projection import ProjectionSkipped, SkipProjection
from services.domain.errors import Rejected


@dataclass(frozen=True)
class DeadLetter:
    projection: str
    position: int
    event_type: str
    error: str
    skipped: bool


def decide_skip(dead_letter: DeadLetter | None, command: SkipProjection) -> ProjectionSkipped:
    """The audit event for skipping `command.position`, or `Rejected` if there is nothing to skip."""
    if dead_letter is None:
        raise Rejected(
            "no_dead_letter",
            f"The projection {command.projection} has no dead letter at position "
            f"{command.position}: `certplane projections` shows where each projector stopped.",
            projection=command.projection,
        )
    if dead_letter.skipped:
        raise Rejected(
            "already_skipped",
            f"Position {command.position} of {command.projection} was already skipped.",
            projection=command.projection,
        )
    if not command.reason.strip():
        raise Rejected(
            "reason_required",
            "Say why the event may be skipped (--reason): the audit log keeps it.",
        )
    return ProjectionSkipped(
        projection=command.projection,
        position=command.position,
        event_type=dead_letter.event_type,
        error=dead_letter.error[:500],
        reason=command.reason,
    )
