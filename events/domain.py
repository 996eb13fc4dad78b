"""Custom domains of an app, and the global claim that keeps a hostname on one app only."""

from __future__ import annotations

from events.base import AppCommand, Event


class AddDomain(AppCommand, tag="domain.add"):
    hostname: str


class RemoveDomain(AppCommand, tag="domain.remove"):
    hostname: str


class UpdateDomain(AppCommand, tag="domain.update"):
    """Choose the SNI endpoint that serves a domain (`heroku domains:update HOST --cert NAME`);
    `bypass` allows one whose certificate does not cover it."""

    hostname: str
    endpoint: str
    bypass: bool = False


class VerifyDns(AppCommand, tag="domain.verify_dns"):
    """Records the result of a DNS check (the check itself is ACM's job)."""

    hostname: str
    verified: bool
    detail: str = ""


class DomainAdded(Event, tag="domain.added"):
    """`endpoint` is the SNI endpoint that serves it from the start, if one covers it."""

    app: str
    hostname: str
    endpoint: str | None = None


class DomainRemoved(Event, tag="domain.removed"):
    app: str
    hostname: str


class DomainUpdated(Event, tag="domain.updated"):
    """The domain is served by the SNI endpoint `endpoint` from now on."""

    app: str
    hostname: str
    endpoint: str


class DnsVerified(Event, tag="domain.dns_verified"):
    app: str
    hostname: str
    verified: bool
    detail: str = ""


class HostnameClaimed(Event, tag="hostname.claimed"):
    """Written to the hostname's own stream: its version check makes a hostname unique."""

    app: str
    hostname: str


class HostnameReleased(Event, tag="hostname.released"):
    app: str
    hostname: str
