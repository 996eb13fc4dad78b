"""Unions of the whole contract, and the registry of stored event types and versions."""

from __future__ import annotations

from events.app import AppCreated, AppDestroyed, CreateApp, DestroyApp
from events.base import Event
from events.domain import (
    AddDomain,
    DnsVerified,
    DomainAdded,
    DomainRemoved,
    DomainUpdated,
    HostnameClaimed,
    HostnameReleased,
    RemoveDomain,
    UpdateDomain,
    VerifyDns,
)
from events.endpoint import (
    AddCert,
    CertAdded,
    CertRemoved,
    CertUpdated,
    DestroyEndpoint,
    EndpointDestroyed,
    RemoveCert,
    UpdateCert,
)
from events.projection import ProjectionSkipped, SkipProjection

AppEvent = (
    AppCreated
    | AppDestroyed
    | DomainAdded
    | DomainRemoved
    | DomainUpdated
    | DnsVerified
    | CertAdded
    | CertUpdated
    | CertRemoved
    | EndpointDestroyed
)
HostnameEvent = HostnameClaimed | HostnameReleased
ProjectionEvent = ProjectionSkipped
AnyEvent = AppEvent | HostnameEvent | ProjectionEvent

AnyCommand = (
    CreateApp
    | DestroyApp
    | AddDomain
    | RemoveDomain
    | UpdateDomain
    | VerifyDns
    | AddCert
    | UpdateCert
    | RemoveCert
    | DestroyEndpoint
    | SkipProjection
)

EVENT_TYPES: tuple[type[Event], ...] = (
    AppCreated,
    AppDestroyed,
    DomainAdded,
    DomainRemoved,
    DomainUpdated,
    DnsVerified,
    CertAdded,
    CertUpdated,
    CertRemoved,
    EndpointDestroyed,
    HostnameClaimed,
    HostnameReleased,
    ProjectionSkipped,
)
COMMAND_TYPES: tuple[type, ...] = (
    CreateApp,
    DestroyApp,
    AddDomain,
    RemoveDomain,
    UpdateDomain,
    VerifyDns,
    AddCert,
    UpdateCert,
    RemoveCert,
    DestroyEndpoint,
    SkipProjection,
)


def tag_of(cls: type) -> str:
    """The stable stored name of a tagged Struct class."""
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag
