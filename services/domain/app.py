"""The app aggregate: `evolve` folds its stream, `decide` turns a command into events.

One stream per app (`app-<name>`) holds the app, its domains and its endpoints: they change
together (a certificate moves domains between endpoints) and are small. A hostname must
belong to one app at a time across the platform, so adding or removing a domain also writes
to the hostname's own stream (`hostname-<host>`); the log's per-stream version check makes
two concurrent claims of one hostname impossible. Both functions are pure and total.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import immutables
import msgspec
from msgspec.structs import replace

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
    CertificateFacts,
    CertRemoved,
    CertUpdated,
    DestroyEndpoint,
    EncryptedKey,
    EndpointDestroyed,
    EndpointType,
    RemoveCert,
    UpdateCert,
)
from events.union import AnyCommand, AppEvent, HostnameEvent
from services.domain.domain_name import claimable_hostname, covered_by, normalize_hostname
from services.domain.errors import Rejected
from services.domain.naming import endpoint_name, validate_app_name
from services.domain.streams import app_stream, hostname_stream


# The fold's states are frozen Structs, not dataclasses: a frozen dataclass sets each field
# through object.__setattr__ (~1 µs a state here, 10x a Struct), and every event builds one.
class DomainState(msgspec.Struct, frozen=True, gc=False):
    hostname: str
    endpoint: str | None = None
    dns_verified: bool | None = None


class EndpointState(msgspec.Struct, frozen=True, gc=False):
    name: str
    endpoint_type: EndpointType
    certificate: CertificateFacts
    key_id: str
    chain_pem: str = ""
    key: EncryptedKey | None = None


class AppState(msgspec.Struct, frozen=True):
    name: str
    exists: bool = False
    # A dict while small, then a persistent map (see `_updated`).
    domains: Mapping[str, DomainState] = msgspec.field(default_factory=dict)
    endpoints: Mapping[str, EndpointState] = msgspec.field(default_factory=dict)

    def served_by(self, endpoint: str) -> list[str]:
        """The hostnames routers serve with `endpoint` (as `serving` decides): its own and,
        for a legacy SSL Endpoint, every domain no SNI endpoint claims."""
        own = self.endpoints.get(endpoint)
        if own is not None and own.endpoint_type is EndpointType.ENDPOINT:  # one per app
            return sorted(
                h for h, d in self.domains.items() if not d.endpoint or d.endpoint == endpoint
            )
        return sorted(h for h, d in self.domains.items() if d.endpoint == endpoint)

    def legacy(self) -> EndpointState | None:
        for e in self.endpoints.values():  # a loop, not next(genexpr): runs per domain event
            if e.endpoint_type is EndpointType.ENDPOINT:
                return e
        return None

    def endpoint_for(self, host: str) -> EndpointState | None:
        """The endpoint routers serve `host` with (see `serving`), if any."""
        domain = self.domains.get(host)
        if domain is None:
            return None
        if domain.endpoint:
            return self.endpoints.get(domain.endpoint)
        return self.legacy()

    def serving(self) -> dict[str, EndpointState]:
        """What routers serve: each hostname's endpoint; a legacy SSL Endpoint serves the
        domains no SNI endpoint claims (so both can coexist during a migration)."""
        legacy = next(
            (e for e in self.endpoints.values() if e.endpoint_type is EndpointType.ENDPOINT), None
        )
        served = {}
        for host, domain in self.domains.items():
            endpoint = self.endpoints.get(domain.endpoint) if domain.endpoint else legacy
            if endpoint is not None:
                served[host] = endpoint
        return served


class HostnameState(msgspec.Struct, frozen=True, gc=False):
    hostname: str
    claimed_by: str | None = None


@dataclass(frozen=True)
class PreparedCert:
    """A bundle the gateway has validated and encrypted: what `decide` needs of AddCert/UpdateCert."""

    facts: CertificateFacts
    chain_pem: str
    key: EncryptedKey


@dataclass(frozen=True)
class Decision:
    """Events per stream, in order, and warnings for the person who asked."""

    events: list[tuple[str, Event]]
    warnings: list[str] = field(default_factory=list)


def evolve(state: AppState, event: AppEvent) -> AppState:
    """Apply one event of the app's stream."""
    match event:
        case AppCreated():
            return AppState(name=state.name, exists=True)
        case AppDestroyed():
            return AppState(name=state.name, exists=False)
        case DomainAdded(hostname=host, endpoint=endpoint):
            return _with(state, domains=_updated(state, {host: DomainState(host, endpoint)}))
        case DomainRemoved(hostname=host):
            if host not in state.domains:
                return state
            return _with(state, domains=_without(state, host))
        case DnsVerified(hostname=host, verified=verified):
            if host not in state.domains:
                return state
            domain = replace(state.domains[host], dns_verified=verified)
            return _with(state, domains=_updated(state, {host: domain}))
        case DomainUpdated(hostname=host, endpoint=name):
            if host not in state.domains:
                return state
            domain = replace(state.domains[host], endpoint=name)
            return _with(state, domains=_updated(state, {host: domain}))
        case CertAdded(
            endpoint=name, endpoint_type=kind, certificate=facts, key=key, domains=hosts
        ):
            added = EndpointState(name, kind, facts, key.key_id, event.chain_pem, key)
            domains = state.domains
            claimed = {
                h: DomainState(h, name, domains[h].dns_verified) for h in hosts if h in domains
            }
            return _with(
                state, endpoints={**state.endpoints, name: added}, domains=_updated(state, claimed)
            )
        case CertUpdated(
            endpoint=name, certificate=facts, key=key, chain_pem=chain, reassigned=moved
        ):
            if name not in state.endpoints:
                return state
            updated = replace(
                state.endpoints[name],
                certificate=facts,
                key_id=key.key_id,
                chain_pem=chain,
                key=key,
            )
            domains = state.domains
            served = {
                h: DomainState(h, moved[h], domains[h].dns_verified) for h in moved if h in domains
            }
            return _with(
                state, endpoints={**state.endpoints, name: updated}, domains=_updated(state, served)
            )
        case (
            CertRemoved(endpoint=name, reassigned=moved)
            | EndpointDestroyed(endpoint=name, reassigned=moved)
        ):
            orphaned = {
                h: DomainState(h, moved.get(h), d.dns_verified)
                for h, d in state.domains.items()
                if d.endpoint == name
            }
            return _with(
                state,
                endpoints={n: e for n, e in state.endpoints.items() if n != name},
                domains=_updated(state, orphaned),
            )
    return state


# Below this many domains a dict copy costs no more than a persistent map's update, and a
# dict reads faster (most apps have a handful); above it, copying the map for every domain
# event cost O(n) a command: 8-14 % of the gateway's CPU with apps of ~1,000 domains.
PERSISTENT_FROM = 64


def _updated(state: AppState, changes: Mapping[str, DomainState]) -> Mapping[str, DomainState]:
    """The app's domains with `changes` applied; the old mapping is left as it was."""
    domains = state.domains
    if not changes:
        return domains
    if isinstance(domains, immutables.Map):
        return domains.update(changes)
    if len(domains) + len(changes) < PERSISTENT_FROM:
        return {**domains, **changes}
    return immutables.Map(domains).update(changes)  # O(n) once, when the app grows past it


def _without(state: AppState, host: str) -> Mapping[str, DomainState]:
    domains = state.domains
    if isinstance(domains, immutables.Map):
        return domains.delete(host)
    return {h: d for h, d in domains.items() if h != host}


def _with(
    state: AppState,
    *,
    domains: Mapping[str, DomainState] | None = None,
    endpoints: Mapping[str, EndpointState] | None = None,
) -> AppState:
    """`dataclasses.replace` for the fold's hot path (a plain constructor is ~5x faster)."""
    return AppState(
        name=state.name,
        exists=state.exists,
        domains=state.domains if domains is None else domains,
        endpoints=state.endpoints if endpoints is None else endpoints,
    )


def evolve_hostname(state: HostnameState, event: HostnameEvent) -> HostnameState:
    """Apply one event of a hostname's claim stream."""
    match event:
        case HostnameClaimed(app=app):
            return replace(state, claimed_by=app)
        case HostnameReleased():
            return replace(state, claimed_by=None)
    return state


def related_hostnames(state: AppState, command: AnyCommand) -> list[str]:
    """Hostname streams a command must read (and may write) besides the app's own."""
    match command:
        case AddDomain(hostname=raw) | RemoveDomain(hostname=raw):
            return _try_normalize([raw])
        case AddCert(domains=raw):
            return [h for h in _try_normalize(raw) if h not in state.domains]
        case DestroyApp():
            return sorted(state.domains)
    return []


def _try_normalize(raw: list[str]) -> list[str]:
    hosts = []
    for r in raw:
        try:
            hosts.append(normalize_hostname(r))
        except Rejected:
            continue  # decide rejects it with the full message
    return hosts


def decide(
    state: AppState,
    hostnames: Mapping[str, HostnameState],
    command: AnyCommand,
    *,
    now: dt.datetime,
    seed: str,
    cert: PreparedCert | None = None,
) -> Decision:
    """Events that carry out `command` on `state`, or raise `Rejected`.

    `hostnames` holds the claim state of every hostname `related_hostnames` named; `seed`
    (the command id) derives new names; `cert` is the prepared bundle for AddCert/UpdateCert.
    """
    app = state.name
    if not isinstance(command, CreateApp):
        _require_app(state)
    match command:
        case CreateApp():
            validate_app_name(app)
            if state.exists:
                raise Rejected(
                    "app_exists",
                    f"The app {app} already exists: choose another name, or manage it with -a {app}.",
                    app=app,
                )
            return Decision([(app_stream(app), AppCreated(app=app))])
        case DestroyApp():
            shredded = sorted(e.key_id for e in state.endpoints.values())
            events: list[tuple[str, Event]] = [
                (app_stream(app), AppDestroyed(app=app, shredded_key_ids=shredded))
            ]
            events += [
                (hostname_stream(h), HostnameReleased(app=app, hostname=h))
                for h in sorted(state.domains)
            ]
            return Decision(events)
        case AddDomain(hostname=raw):
            host = claimable_hostname(raw)
            _check_free(state, hostnames, host)
            serving = _covering_sni_endpoint(state, host)
            return Decision(
                [
                    (app_stream(app), DomainAdded(app=app, hostname=host, endpoint=serving)),
                    (hostname_stream(host), HostnameClaimed(app=app, hostname=host)),
                ]
            )
        case RemoveDomain(hostname=raw):
            host = _existing_domain(state, raw)
            return Decision(
                [
                    (app_stream(app), DomainRemoved(app=app, hostname=host)),
                    (hostname_stream(host), HostnameReleased(app=app, hostname=host)),
                ]
            )
        case UpdateDomain(hostname=raw, endpoint=name, bypass=bypass):
            host = _existing_domain(state, raw)
            endpoint = _endpoint(state, name)
            if endpoint.endpoint_type is not EndpointType.SNI:
                raise Rejected(
                    "endpoint_not_sni",
                    f"{name} is {app}'s legacy SSL Endpoint, which serves every domain no SNI "
                    "certificate claims: choose an SNI certificate (`certplane certs`), or remove "
                    f"the one that serves {host} now.",
                    endpoint=name,
                )
            if not bypass and not covered_by(endpoint.certificate.sans, host):
                raise Rejected(
                    "domain_not_covered",
                    f"{name}'s certificate does not cover {host} (it covers "
                    f"{', '.join(endpoint.certificate.sans) or 'no DNS names'}): choose one that "
                    "does, or pass --bypass to serve it anyway.",
                    hostnames=host,
                )
            if state.domains[host].endpoint == name:
                raise Rejected(
                    "domain_unchanged",
                    f"{host} is served by {name} already: nothing to change.",
                    hostname=host,
                )
            return Decision(
                [(app_stream(app), DomainUpdated(app=app, hostname=host, endpoint=name))]
            )
        case VerifyDns(hostname=raw, verified=verified, detail=detail):
            host = _existing_domain(state, raw)
            return Decision(
                [
                    (
                        app_stream(app),
                        DnsVerified(app=app, hostname=host, verified=verified, detail=detail),
                    )
                ]
            )
        case AddCert():
            assert cert is not None, "the gateway prepares the bundle before deciding"
            decision = _add_cert(state, hostnames, command, cert, seed)
            decision.warnings.extend(_expiry_warnings(cert.facts, now))
            return decision
        case UpdateCert(name=name, bypass=bypass):
            assert cert is not None, "the gateway prepares the bundle before deciding"
            endpoint = _endpoint(state, name)
            warnings = []
            uncovered = [
                h for h in state.served_by(endpoint.name) if not covered_by(cert.facts.sans, h)
            ]
            # A hostname the new certificate drops moves to another that covers it, as on
            # certs:remove; --bypass keeps every hostname where it is.
            moved = {} if bypass else _fallbacks(state, endpoint.name, only=set(uncovered))
            for host, other in sorted(moved.items()):
                warnings.append(
                    f"The new certificate does not cover {host}: {other}, whose certificate "
                    "does, serves it from now on."
                )
            stranded = [h for h in uncovered if h not in moved]
            if stranded and not bypass:
                warnings.append(
                    f"The new certificate does not cover {', '.join(stranded)}, which "
                    f"{endpoint.name} serves: browsers will show an error for them. Upload a "
                    "certificate whose names include them, or pass --bypass to silence this."
                )
            warnings += _expiry_warnings(cert.facts, now, replaced=endpoint.certificate)
            event = CertUpdated(
                app=app,
                endpoint=endpoint.name,
                certificate=cert.facts,
                chain_pem=cert.chain_pem,
                key=cert.key,
                shredded_key_ids=[endpoint.key_id],
                reassigned=moved,
            )
            return Decision([(app_stream(app), event)], warnings)
        case RemoveCert(name=name) | DestroyEndpoint(name=name):
            endpoint = _endpoint(state, name)
            gone = (CertRemoved if isinstance(command, RemoveCert) else EndpointDestroyed)(
                app=app,
                endpoint=endpoint.name,
                shredded_key_ids=[endpoint.key_id],
                reassigned=_fallbacks(state, endpoint.name),
            )
            return Decision([(app_stream(app), gone)])
    raise Rejected(
        "unknown_command", f"certplane does not know the command {type(command).__name__}."
    )


EXPIRY_WARNING = dt.timedelta(days=30)


def _expiry_warnings(
    facts: CertificateFacts, now: dt.datetime, replaced: CertificateFacts | None = None
) -> list[str]:
    """What an owner should hear about a certificate's lifetime while it can still act."""
    warnings = []
    left = facts.not_after - now
    if left <= EXPIRY_WARNING:
        warnings.append(
            f"The certificate expires on {facts.not_after:%Y-%m-%d %H:%M} UTC, in "
            f"{max(left.days, 0)} days: renew it soon (`certplane certs` lists every expiry)."
        )
    if replaced is not None and facts.fingerprint_sha256 == replaced.fingerprint_sha256:
        warnings.append(
            "The new certificate is the one the endpoint already had: only its key was "
            "encrypted again."
        )
    elif replaced is not None and facts.not_after < replaced.not_after:
        warnings.append(
            f"The new certificate expires before the one it replaces ({facts.not_after:%Y-%m-%d} "
            f"against {replaced.not_after:%Y-%m-%d}): check that it is the renewed one."
        )
    return warnings


def _require_app(state: AppState) -> None:
    if not state.exists:
        raise Rejected(
            "app_not_found",
            f"There is no app named {state.name}: check the name (`certplane apps`) or create it "
            f"with `certplane apps:create {state.name}`.",
            app=state.name,
        )


def _check_free(state: AppState, hostnames: Mapping[str, HostnameState], host: str) -> None:
    if host in state.domains:
        raise Rejected(
            "domain_exists",
            f"{host} is already a domain of {state.name}: nothing to add.",
            hostname=host,
        )
    claim = hostnames.get(host, HostnameState(host))
    if claim.claimed_by is not None:
        raise Rejected(
            "domain_taken",
            f"{host} is already in use by another app: remove it from that app first, or "
            "ask its owner to.",
            hostname=host,
        )


def _existing_domain(state: AppState, raw: str) -> str:
    host = normalize_hostname(raw)
    if host not in state.domains:
        raise Rejected(
            "domain_not_found",
            f"{host} is not a domain of {state.name}: see its domains with "
            f"`certplane domains -a {state.name}`.",
            hostname=host,
        )
    return host


def _covering_sni_endpoint(state: AppState, host: str, but: str | None = None) -> str | None:
    for endpoint in reversed(list(state.endpoints.values())):  # newest certificate wins
        if (
            endpoint.endpoint_type is EndpointType.SNI
            and endpoint.name != but
            and covered_by(endpoint.certificate.sans, host)
        ):
            return endpoint.name
    return None


def _fallbacks(state: AppState, gone: str, only: set[str] | None = None) -> dict[str, str]:
    """Who serves the hostnames of an endpoint being removed (or those of `only`, which its
    new certificate drops): the newest other SNI endpoint whose certificate covers each, as
    `domains:add` would pick (no outage for a hostname another certificate covers)."""
    moved = {}
    for host in sorted(state.served_by(gone) if only is None else only):
        if state.domains[host].endpoint not in (gone, None):
            continue
        if other := _covering_sni_endpoint(state, host, gone):
            moved[host] = other
    return moved


def _endpoint(state: AppState, name: str | None) -> EndpointState:
    if name is None:
        if len(state.endpoints) == 1:
            return next(iter(state.endpoints.values()))
        if not state.endpoints:
            raise Rejected(
                "endpoint_not_found",
                f"{state.name} has no SSL certificates: add one with `certplane certs:add CRT KEY`.",
                app=state.name,
            )
        raise Rejected(
            "endpoint_ambiguous",
            f"{state.name} has {len(state.endpoints)} certificates: say which one with --name "
            f"({', '.join(sorted(state.endpoints))}).",
            app=state.name,
        )
    if name not in state.endpoints:
        raise Rejected(
            "endpoint_not_found",
            f"{state.name} has no certificate named {name}: see them with `certplane certs -a {state.name}`.",
            app=state.name,
            name=name,
        )
    return state.endpoints[name]


def _add_cert(
    state: AppState,
    hostnames: Mapping[str, HostnameState],
    command: AddCert,
    cert: PreparedCert,
    seed: str,
) -> Decision:
    app = state.name
    legacy = state.legacy() if command.endpoint_type is EndpointType.ENDPOINT else None
    if legacy is not None:
        raise Rejected(
            "legacy_endpoint_exists",
            f"{app} already has an SSL Endpoint ({legacy.name}); an app can have only one. "
            "Update it with `certplane certs:update`, or add this certificate with --type sni.",
            app=app,
        )
    requested = [claimable_hostname(h) for h in command.domains]
    sans = cert.facts.sans
    if requested and not command.bypass:
        uncovered = [h for h in requested if not covered_by(sans, h)]
        if uncovered:
            raise Rejected(
                "domain_not_covered",
                f"The certificate does not cover {', '.join(uncovered)} (it covers "
                f"{', '.join(sans) or 'no DNS names'}): pass only domains it names, or --bypass "
                "to associate them anyway.",
                hostnames=",".join(uncovered),
            )
    new_domains = [h for h in dict.fromkeys(requested) if h not in state.domains]
    for host in new_domains:
        _check_free(state, hostnames, host)
    name = endpoint_name(seed, state.endpoints.keys())
    warnings: list[str] = []
    twin = next(
        (
            e.name
            for e in state.endpoints.values()
            if e.certificate.fingerprint_sha256 == cert.facts.fingerprint_sha256
            and e.endpoint_type is command.endpoint_type
        ),
        None,
    )
    if twin is not None:  # most often the same command run twice; a migration changes type
        warnings.append(
            f"{app} already has this certificate as {twin}; {name} is a second endpoint with it. "
            f"If that was not the intent, remove one with `certplane certs:remove --name {name} "
            f"--confirm {app}`."
        )
    if command.endpoint_type is EndpointType.ENDPOINT:
        assigned = list(dict.fromkeys(requested))  # a legacy endpoint serves whatever SNI does not
    elif requested:
        assigned = list(dict.fromkeys(requested))
    else:
        assigned = [h for h in sorted(state.domains) if covered_by(sans, h)]
        if not assigned and not command.bypass:
            names = ", ".join(sorted(state.domains)) or "none yet"
            warnings.append(
                f"The certificate ({', '.join(sans) or 'no DNS names'}) covers none of {app}'s "
                f"domains ({names}): it serves nothing until you add a domain it covers with "
                "`certplane domains:add`. Pass --bypass to skip this check."
            )
    events: list[tuple[str, Event]] = []
    for host in new_domains:
        events.append((app_stream(app), DomainAdded(app=app, hostname=host)))
        events.append((hostname_stream(host), HostnameClaimed(app=app, hostname=host)))
    events.append(
        (
            app_stream(app),
            CertAdded(
                app=app,
                endpoint=name,
                endpoint_type=command.endpoint_type,
                certificate=cert.facts,
                chain_pem=cert.chain_pem,
                key=cert.key,
                domains=assigned,
            ),
        )
    )
    return Decision(events, warnings)


# A tuple, not `A | B | ...`: that builds a union object on every call, and this runs per event.
ONE_DOMAIN_EVENTS = (DomainAdded, DomainRemoved, DomainUpdated, DnsVerified)


def hosts_changed(before: AppState, after: AppState, event: object = None) -> set[str]:
    """Hostnames whose serving endpoint (or its certificate) may differ between two states.

    Cheap: `evolve` keeps unchanged DomainState and EndpointState objects, so identity says
    what changed; a changed endpoint affects the hosts it serves, and a changed legacy
    endpoint the hosts no SNI endpoint claims. Given the `event` between the two states, a
    domain event that left the endpoints alone changed its own hostname only: O(1) instead
    of a pass over the app's domains (apps with thousands of them exist).
    """
    if isinstance(event, ONE_DOMAIN_EVENTS) and before.endpoints is after.endpoints:
        return {event.hostname}
    hosts = {
        h
        for h in {*before.domains, *after.domains}
        if before.domains.get(h) is not after.domains.get(h)
    }
    changed = {
        n
        for n in before.endpoints.keys() | after.endpoints.keys()
        if before.endpoints.get(n) is not after.endpoints.get(n)
    }
    if changed:
        legacy = any(
            e.endpoint_type is EndpointType.ENDPOINT
            for n in changed
            for e in (before.endpoints.get(n), after.endpoints.get(n))
            if e is not None
        )
        for state in (before, after):
            for h, d in state.domains.items():
                if d.endpoint in changed or (legacy and d.endpoint is None):
                    hosts.add(h)
    return hosts
