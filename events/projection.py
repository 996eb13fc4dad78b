"""Operator actions on projections that must be audited: skipping a poison event."""

from __future__ import annotations

from events.base import Command, Event


class SkipProjection(Command, tag="projection.skip"):
    """Move a projector stopped on a dead letter past that one position."""

    projection: str
    position: int
    reason: str


class ProjectionSkipped(Event, tag="projection.skipped"):
    projection: str
    position: int
    event_type: str
    error: str
    reason: str
