"""Answers on the wire: to commands (`Accepted` / `Rejected`) and to read queries (views)."""

from __future__ import annotations

import datetime as dt

import msgspec

from events.base import Reply
from events.endpoint import CertificateFacts, EndpointType
from events.union import AnyEvent


class Accepted(Reply, tag="accepted"):
    """The command's events are in the log: `position` is the last global position written."""

    stream: str
    version: int
    position: int
    events: list[AnyEvent]
    warnings: list[str] = []


class Rejected(Reply, tag="rejected"):
    """Nothing was appended. `code` is stable; `message` says what was wrong and how to fix it."""

    code: str
    message: str
    details: dict[str, str] = {}


class AppSummary(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    domains: int
    endpoints: int


class DomainView(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str
    endpoint: str | None
    dns_verified: bool | None
    dns_target: str = ""


class EndpointView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    endpoint_type: EndpointType
    certificate: CertificateFacts
    domains: list[str]


class AppsView(Reply, tag="view.apps"):
    apps: list[AppSummary]


class AppView(Reply, tag="view.app"):
    """One app's domains and endpoints, as `domains`, `certs` and `certs:info` show them."""

    app: str
    domains: list[DomainView]
    endpoints: list[EndpointView]


class GatewayKey(Reply, tag="view.gateway_key"):
    """The public X25519 key clients seal private keys to before sending them."""

    key_id: str
    public_key: bytes


class Checkpoints(Reply, tag="view.checkpoints"):
    """How far each projection has applied the log, and the log's head."""

    head: int
    positions: dict[str, int]


class ProjectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    checkpoint: int
    head: int
    lag_events: int
    lag_seconds: float
    state: str  # running | standby | stopped | absent
    instances: list[str]
    detail: str = ""


class ProjectionsView(Reply, tag="view.projections"):
    projections: list[ProjectionStatus]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    recorded_at: dt.datetime
    app: str
    actor: str
    action: str
    object: str
    summary: str
    command_id: str
    trace_id: str


class AuditView(Reply, tag="view.audit"):
    entries: list[AuditEntry]


class RebuildStarted(Reply, tag="ops.rebuild_started"):
    """The leading projector of `projection` is rebuilding it from position 0."""

    projection: str
    instance: str


class QueryParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a query request."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    hostname: str | None = None
    limit: int = 1000


CommandReply = Accepted | Rejected
QueryReply = (
    AppsView
    | AppView
    | GatewayKey
    | Checkpoints
    | ProjectionsView
    | AuditView
    | RebuildStarted
    | Rejected
)
