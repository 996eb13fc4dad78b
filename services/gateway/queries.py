"""Read requests answered from the projections (certificates.*, dns_targets.*, audit.*)."""

from __future__ import annotations

import datetime as dt
import re

import asyncpg
import msgspec

from events.endpoint import CertificateFacts, EndpointType
from events.replies import (
    AppSummary,
    AppsView,
    AppView,
    AuditEntry,
    AuditView,
    Checkpoints,
    DomainView,
    EndpointView,
    ProjectionStatus,
    ProjectionsView,
    QueryParams,
    Rejected,
)

PROJECTIONS = ("certificates", "dns_targets", "router_config", "audit")
_FACTS = msgspec.json.Decoder(CertificateFacts)


def _not_ready(error: asyncpg.UndefinedTableError) -> Rejected:
    """The read model a query needs has no tables yet: name it, and what creates it."""
    found = re.search(r'relation "(\w+)\.', str(error))
    name = found.group(1) if found and found.group(1) in PROJECTIONS else None
    what = f"The {name} read model does not" if name else "The read models do not"
    run = f"`certplane projector {name}`" if name else "`certplane projector`"
    return Rejected(
        code="projections_unavailable",
        message=f"{what} exist yet: start the projectors ({run}, or `certplane dev` which runs "
        "everything) and try again.",
        details={"projection": name} if name else {},
    )


class ReadModels:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def apps(self) -> AppsView | Rejected:
        try:
            rows = await self._pool.fetch(
                "select name, domains, endpoints from certificates.apps order by name"
            )
        except asyncpg.UndefinedTableError as e:
            return _not_ready(e)
        return AppsView(apps=[AppSummary(name=r[0], domains=r[1], endpoints=r[2]) for r in rows])

    async def app(self, app: str) -> AppView | Rejected:
        try:
            exists = await self._pool.fetchval(
                "select 1 from certificates.apps where name = $1", app
            )
            domains = await self._pool.fetch(
                "select d.hostname, d.endpoint, d.dns_verified, coalesce(t.target, '')"
                " from certificates.domains d left join dns_targets.dns_targets t using (hostname)"
                " where d.app = $1 order by d.hostname",
                app,
            )
            endpoints = await self._pool.fetch(
                "select name, endpoint_type, certificate::text, domains from certificates.endpoints"
                " where app = $1 order by name",  # a stable order: updates do not move rows
                app,
            )
        except asyncpg.UndefinedTableError as e:
            return _not_ready(e)
        if not exists:
            return Rejected(
                code="app_not_found",
                message=f"There is no app named {app}: check the name (`certplane apps`).",
                details={"app": app},
            )
        return AppView(
            app=app,
            domains=[
                DomainView(hostname=r[0], endpoint=r[1], dns_verified=r[2], dns_target=r[3])
                for r in domains
            ],
            endpoints=[
                EndpointView(
                    name=r[0],
                    endpoint_type=EndpointType(r[1]),
                    certificate=_FACTS.decode(r[2]),
                    domains=list(r[3]),
                )
                for r in endpoints
            ],
        )

    async def checkpoints(self) -> Checkpoints:
        rows = await self._pool.fetch("select name, position from projector_checkpoints")
        head = await self._pool.fetchval("select position from log_head")
        return Checkpoints(head=head, positions={r[0]: r[1] for r in rows if "#" not in r[0]})

    async def projections(self) -> ProjectionsView:
        head_row = await self._pool.fetchrow("select position, recorded_at from log_head")
        head, head_at = head_row[0], head_row[1]
        checkpoints = {
            r[0]: r[1]
            for r in await self._pool.fetch("select name, position from projector_checkpoints")
        }
        status = await self._pool.fetch(
            "select name, instance, state, detail, heartbeat_at > now() - interval '10 seconds'"
            " from projector_status order by name, instance"
        )
        views = []
        for name in sorted(set(PROJECTIONS) | {n for n in checkpoints if "#" not in n}):
            position = checkpoints.get(name, 0)
            live = [r for r in status if r[0] == name and r[4]]
            states = [r[2] for r in live]
            state = next(
                (s for s in ("stopped", "running", "rebuilding", "standby") if s in states),
                "absent",
            )
            detail = next((r[3] for r in live if r[2] == state and r[3]), "")
            lag_seconds = 0.0
            if position < head:
                behind = await self._pool.fetchval(
                    "select recorded_at from events where position = $1", position + 1
                )
                if behind is not None and head_at is not None:
                    lag_seconds = max(0.0, (head_at - behind).total_seconds())
            views.append(
                ProjectionStatus(
                    name=name,
                    checkpoint=position,
                    head=head,
                    lag_events=head - position,
                    lag_seconds=lag_seconds,
                    state=state,
                    instances=[f"{r[1]} ({r[2]})" for r in live],
                    detail=detail,
                )
            )
        return ProjectionsView(projections=views)

    async def audit(self, app: str, params: QueryParams) -> AuditView | Rejected:
        since = params.since or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        until = params.until or dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
        try:
            rows = await self._pool.fetch(
                "select position, recorded_at, app, actor, action, object, summary,"
                " command_id::text, trace_id from audit.audit_log"
                " where app = $1 and recorded_at >= $2 and recorded_at <= $3"
                " order by position limit $4",
                app,
                since,
                until,
                min(max(params.limit, 1), 10_000),
            )
        except asyncpg.UndefinedTableError as e:
            return _not_ready(e)
        return AuditView(entries=[AuditEntry(**dict(r)) for r in rows])
