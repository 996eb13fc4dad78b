"""The app aggregate's decide/evolve: pure, so tested with plain values and no I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import reduce

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.app import AppCreated, CreateApp, DestroyApp
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
    SealedKey,
    UpdateCert,
)
from services.audit.replay import app_summary
from services.domain import app as app_aggregate
from services.domain.app import (
    AppState,
    HostnameState,
    PreparedCert,
    decide,
    evolve,
    hosts_changed,
    related_hostnames,
)
from services.domain.errors import Rejected

NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
SEALED = SealedKey(gateway_key_id="k", ephemeral_public=b"", nonce=b"", ciphertext=b"")


def cert(*sans: str, key_id: str = "key-1") -> PreparedCert:
    facts = CertificateFacts(
        subject="/CN=" + sans[0],
        issuer="/CN=ca",
        common_name=sans[0],
        sans=list(sans),
        not_before=NOW,
        not_after=NOW + dt.timedelta(days=90),
        fingerprint_sha256=hashlib.sha256(repr((sans, key_id)).encode()).hexdigest(),
        serial="1",
        key_type="EC secp256r1",
        key_bits=256,
        trusted=True,
        self_signed=False,
    )
    return PreparedCert(
        facts=facts, chain_pem="PEM", key=EncryptedKey(key_id=key_id, nonce=b"n", ciphertext=b"c")
    )


def run(state: AppState, command, hostnames=None, *, seed="cmd-1", prepared=None):
    decision = decide(state, hostnames or {}, command, now=NOW, seed=seed, cert=prepared)
    app_events = [e for s, e in decision.events if s.startswith("app-")]
    return reduce(evolve, app_events, state), decision


def app_with(*domains: str) -> AppState:
    state = evolve(AppState(name="demo"), AppCreated(app="demo"))
    for d in domains:
        state = evolve(state, DomainAdded(app="demo", hostname=d))
    return state


def add_cert(*sans: str, key_id: str = "key-1", **kwargs) -> AddCert:
    return AddCert(app="demo", certificates=[b"x"], key=SEALED, **kwargs)


def with_legacy_endpoint() -> AppState:
    """An app whose www.example.com the legacy SSL Endpoint add-on serves."""
    state, _ = run(
        app_with("www.example.com"),
        add_cert(endpoint_type=EndpointType.ENDPOINT),
        prepared=cert("www.example.com"),
    )
    return state


def codes(excinfo) -> str:
    return excinfo.value.code


@pytest.mark.parametrize(
    ("state", "command", "code"),
    [
        (AppState(name="demo"), AddDomain(app="demo", hostname="a.example.com"), "app_not_found"),
        (app_with(), CreateApp(app="demo"), "app_exists"),
        (AppState(name="Bad_Name"), CreateApp(app="Bad_Name"), "invalid_app_name"),
        (
            app_with("a.example.com"),
            AddDomain(app="demo", hostname="A.example.com."),
            "domain_exists",
        ),
        (app_with(), AddDomain(app="demo", hostname="not a host"), "invalid_hostname"),
        (app_with(), AddDomain(app="demo", hostname="xn--zz.example.com"), "invalid_hostname"),
        (app_with(), RemoveDomain(app="demo", hostname="a.example.com"), "domain_not_found"),
        (
            app_with(),
            VerifyDns(app="demo", hostname="a.example.com", verified=True),
            "domain_not_found",
        ),
        (app_with(), RemoveCert(app="demo"), "endpoint_not_found"),
        (app_with(), DestroyEndpoint(app="demo", name="troodon-00001"), "endpoint_not_found"),
    ],
)
def test_refusals(state, command, code) -> None:
    with pytest.raises(Rejected) as e:
        decide(state, {}, command, now=NOW, seed="s")
    assert e.value.code == code and e.value.message


def test_a_domain_added_before_a_check_existed_can_still_be_removed() -> None:
    """AddDomain now refuses undecodable xn-- labels; a name an older release accepted is
    still found by RemoveDomain, which looks names up without that check."""
    state = app_with("xn--zz.example.com")
    _, d = run(state, RemoveDomain(app="demo", hostname="XN--ZZ.example.com"))
    assert [e.hostname for _, e in d.events] == ["xn--zz.example.com"] * 2


def test_create_then_recreate_after_destroy() -> None:
    state, d = run(AppState(name="demo"), CreateApp(app="demo"))
    assert state.exists and [type(e) for _, e in d.events] == [AppCreated]
    state, _ = run(state, DestroyApp(app="demo"))
    assert not state.exists
    state, _ = run(state, CreateApp(app="demo"))
    assert state.exists and not state.domains


def test_add_domain_claims_the_hostname_and_a_claimed_one_is_refused() -> None:
    _, d = run(app_with(), AddDomain(app="demo", hostname="WWW.Example.com"))
    assert d.events[1] == (
        "hostname-www.example.com",
        HostnameClaimed(app="demo", hostname="www.example.com"),
    )
    with pytest.raises(Rejected) as e:
        decide(
            app_with(),
            {"www.example.com": HostnameState("www.example.com", "other")},
            AddDomain(app="demo", hostname="www.example.com"),
            now=NOW,
            seed="s",
        )
    assert e.value.code == "domain_taken"


def test_add_cert_serves_the_domains_it_covers() -> None:
    state, d = run(
        app_with("www.example.com", "api.example.com", "other.org"),
        add_cert(),
        prepared=cert("*.example.com"),
    )
    ((_, added),) = d.events
    assert isinstance(added, CertAdded) and added.domains == ["api.example.com", "www.example.com"]
    assert state.served_by(added.endpoint) == ["api.example.com", "www.example.com"]
    assert state.domains["other.org"].endpoint is None
    assert not d.warnings


def test_add_cert_covering_no_domain_warns_unless_bypassed() -> None:
    _, d = run(app_with("www.example.com"), add_cert(), prepared=cert("other.org"))
    assert d.warnings and "covers none" in d.warnings[0]
    _, d = run(app_with("www.example.com"), add_cert(bypass=True), prepared=cert("other.org"))
    assert not d.warnings


def test_add_cert_with_domains_adds_and_claims_them_but_refuses_uncovered_ones() -> None:
    state, d = run(
        app_with(), add_cert(domains=["shop.example.com"]), prepared=cert("*.example.com")
    )
    assert [type(e).__name__ for _, e in d.events] == [
        "DomainAdded",
        "HostnameClaimed",
        "CertAdded",
    ]
    assert list(state.domains) == ["shop.example.com"]
    with pytest.raises(Rejected) as e:
        run(app_with(), add_cert(domains=["shop.other.org"]), prepared=cert("*.example.com"))
    assert e.value.code == "domain_not_covered" and "shop.other.org" in e.value.message


def test_only_one_legacy_endpoint_per_app() -> None:
    state = with_legacy_endpoint()
    with pytest.raises(Rejected) as e:
        run(
            state,
            add_cert(endpoint_type=EndpointType.ENDPOINT),
            seed="cmd-2",
            prepared=cert("www.example.com"),
        )
    assert e.value.code == "legacy_endpoint_exists"


def test_sni_cert_takes_domains_from_the_legacy_endpoint_and_its_removal_completes_migration() -> (
    None
):
    state, d = run(
        app_with("www.example.com"),
        add_cert(endpoint_type=EndpointType.ENDPOINT, domains=["www.example.com"]),
        prepared=cert("www.example.com", key_id="legacy"),
    )
    legacy = d.events[-1][1].endpoint
    state, d = run(state, add_cert(), seed="cmd-2", prepared=cert("www.example.com", key_id="sni"))
    sni = d.events[-1][1].endpoint
    assert state.domains["www.example.com"].endpoint == sni
    state, d = run(state, DestroyEndpoint(app="demo", name=legacy))
    assert d.events == [
        ("app-demo", EndpointDestroyed(app="demo", endpoint=legacy, shredded_key_ids=["legacy"]))
    ]
    assert state.domains["www.example.com"].endpoint == sni and list(state.endpoints) == [sni]


def test_update_and_remove_shred_the_previous_data_key() -> None:
    state, d = run(
        app_with("www.example.com"), add_cert(), prepared=cert("www.example.com", key_id="k1")
    )
    state, d = run(
        state,
        UpdateCert(app="demo", certificates=[b"x"], key=SEALED),
        prepared=cert("www.example.com", key_id="k2"),
    )
    ((_, updated),) = d.events
    assert isinstance(updated, CertUpdated) and updated.shredded_key_ids == ["k1"]
    state, d = run(state, RemoveCert(app="demo"))
    assert d.events[0][1] == CertRemoved(
        app="demo", endpoint=updated.endpoint, shredded_key_ids=["k2"]
    )
    assert state.domains["www.example.com"].endpoint is None


def test_update_warns_when_the_new_cert_drops_a_served_domain() -> None:
    state, _ = run(app_with("www.example.com"), add_cert(), prepared=cert("www.example.com"))
    _, d = run(
        state,
        UpdateCert(app="demo", certificates=[b"x"], key=SEALED),
        prepared=cert("api.example.com", key_id="k2"),
    )
    assert d.warnings and "www.example.com" in d.warnings[0]


def test_adding_a_certificate_the_app_has_already_warns_but_a_migration_does_not() -> None:
    state, _ = run(app_with("www.example.com"), add_cert(), prepared=cert("www.example.com"))
    (first,) = state.endpoints
    again, d = run(state, add_cert(), seed="cmd-2", prepared=cert("www.example.com"))
    assert len(again.endpoints) == 2
    assert d.warnings and f"already has this certificate as {first}" in d.warnings[0]
    _, d = run(state, add_cert(), seed="cmd-3", prepared=cert("www.example.com", key_id="k9"))
    assert not d.warnings  # another certificate for the same names: a new endpoint, as asked
    legacy = with_legacy_endpoint()
    _, d = run(legacy, add_cert(), seed="cmd-4", prepared=cert("www.example.com"))
    assert not d.warnings  # legacy SSL Endpoint -> SNI, the same certificate


def test_a_certificate_near_its_end_or_older_than_the_one_it_replaces_warns() -> None:
    soon = cert("www.example.com", key_id="soon")
    soon = PreparedCert(
        facts=msgspec.structs.replace(soon.facts, not_after=NOW + dt.timedelta(days=12)),
        chain_pem=soon.chain_pem,
        key=soon.key,
    )
    state, d = run(app_with("www.example.com"), add_cert(), prepared=soon)
    assert any("in 12 days: renew it soon" in w for w in d.warnings), d.warnings
    fresh = cert("www.example.com", key_id="fresh")
    state, d = run(state, UpdateCert(app="demo", certificates=[b"x"], key=SEALED), prepared=fresh)
    assert not d.warnings  # a renewal: later expiry, other certificate
    _, d = run(state, UpdateCert(app="demo", certificates=[b"x"], key=SEALED), prepared=soon)
    assert any("expires before the one it replaces" in w for w in d.warnings), d.warnings
    _, d = run(state, UpdateCert(app="demo", certificates=[b"x"], key=SEALED), prepared=fresh)
    assert d.warnings == [
        "The new certificate is the one the endpoint already had: only its key was encrypted again."
    ]


def test_removing_a_certificate_hands_its_domains_to_another_that_covers_them() -> None:
    state, _ = run(
        app_with("www.example.com", "api.example.com", "shop.example.org"),
        add_cert(),
        prepared=cert("*.example.com", key_id="wild"),
    )
    (wild,) = state.endpoints
    state, _ = run(
        state, add_cert(bypass=True), seed="cmd-2", prepared=cert("www.example.com", key_id="www")
    )
    (www,) = set(state.endpoints) - {wild}
    state, _ = run(
        state,
        add_cert(domains=["shop.example.org"], bypass=True),
        seed="cmd-3",
        prepared=cert("shop.example.org", key_id="shop"),
    )
    assert state.domains["www.example.com"].endpoint == www  # the newest covering one
    after, d = run(state, RemoveCert(app="demo", name=www))
    ((_, removed),) = d.events
    assert isinstance(removed, CertRemoved)
    assert removed.reassigned == {"www.example.com": wild}
    assert after.served_by(wild) == ["api.example.com", "www.example.com"]
    # nothing else covers shop.example.org: it is left without an endpoint, as before
    after, d = run(after, RemoveCert(app="demo", name=next(iter(set(after.endpoints) - {wild}))))
    assert d.events[0][1].reassigned == {}  # type: ignore[union-attr]
    assert after.domains["shop.example.org"].endpoint is None
    # events written before `reassigned` existed fold as they did
    old = CertRemoved(app="demo", endpoint=www, shredded_key_ids=["www"])
    assert evolve(state, old).domains["www.example.com"].endpoint is None


def test_domains_update_chooses_the_certificate_that_serves_a_domain() -> None:
    state, _ = run(
        app_with("www.example.com", "other.org"), add_cert(), prepared=cert("*.example.com")
    )
    (wild,) = state.endpoints
    state, _ = run(state, add_cert(), seed="cmd-2", prepared=cert("www.example.com", key_id="k2"))
    (www,) = set(state.endpoints) - {wild}
    assert state.domains["www.example.com"].endpoint == www
    back, d = run(state, UpdateDomain(app="demo", hostname="WWW.example.com", endpoint=wild))
    assert [e for _, e in d.events] == [
        DomainUpdated(app="demo", hostname="www.example.com", endpoint=wild)
    ]
    assert back.served_by(wild) == ["www.example.com"] and back.served_by(www) == []
    assert hosts_changed(state, back, d.events[0][1]) == {"www.example.com"}
    for command, code in [
        (UpdateDomain(app="demo", hostname="www.example.com", endpoint=www), "domain_unchanged"),
        (UpdateDomain(app="demo", hostname="other.org", endpoint=wild), "domain_not_covered"),
        (UpdateDomain(app="demo", hostname="nope.example.com", endpoint=wild), "domain_not_found"),
        (UpdateDomain(app="demo", hostname="www.example.com", endpoint="x"), "endpoint_not_found"),
    ]:
        with pytest.raises(Rejected) as e:
            run(state, command)
        assert e.value.code == code
    forced, _ = run(
        state, UpdateDomain(app="demo", hostname="other.org", endpoint=www, bypass=True)
    )
    assert forced.domains["other.org"].endpoint == www
    legacy = with_legacy_endpoint()
    with pytest.raises(Rejected) as e:
        run(
            legacy,
            UpdateDomain(
                app="demo", hostname="www.example.com", endpoint=next(iter(legacy.endpoints))
            ),
        )
    assert e.value.code == "endpoint_not_sni"


def test_an_update_that_drops_a_name_hands_it_to_a_certificate_that_covers_it() -> None:
    state, _ = run(
        app_with("www.example.com", "api.example.com"),
        add_cert(),
        prepared=cert("*.example.com", key_id="wild"),
    )
    (wild,) = state.endpoints
    state, _ = run(
        state,
        add_cert(domains=["www.example.com", "api.example.com"]),
        seed="cmd-2",
        prepared=cert("www.example.com", "api.example.com", key_id="both"),
    )
    (both,) = set(state.endpoints) - {wild}
    update = UpdateCert(app="demo", name=both, certificates=[b"x"], key=SEALED)
    after, d = run(state, update, prepared=cert("www.example.com", key_id="www-only"))
    ((_, updated),) = d.events
    assert isinstance(updated, CertUpdated) and updated.reassigned == {"api.example.com": wild}
    assert after.served_by(both) == ["www.example.com"]
    assert after.served_by(wild) == ["api.example.com"]
    assert d.warnings == [
        f"The new certificate does not cover api.example.com: {wild}, whose certificate does,"
        " serves it from now on."
    ]
    kept, d = run(
        state,
        UpdateCert(app="demo", name=both, certificates=[b"x"], key=SEALED, bypass=True),
        prepared=cert("www.example.com", key_id="www-only"),
    )
    assert d.events[0][1].reassigned == {} and not d.warnings  # type: ignore[union-attr]
    assert kept.served_by(both) == ["api.example.com", "www.example.com"]
    # nothing else covers it: it stays, with the warning it always had
    alone, _ = run(app_with("www.example.com", "api.example.com"), add_cert(),
                   prepared=cert("www.example.com", "api.example.com", key_id="k1"))  # fmt: skip
    _, d = run(alone, UpdateCert(app="demo", certificates=[b"x"], key=SEALED),
               prepared=cert("www.example.com", key_id="k2"))  # fmt: skip
    assert d.events[0][1].reassigned == {}  # type: ignore[union-attr]
    assert "browsers will show an error for them" in d.warnings[0]


def test_several_endpoints_need_a_name() -> None:
    state, _ = run(app_with(), add_cert(bypass=True), prepared=cert("a.example.com"))
    state, _ = run(
        state, add_cert(bypass=True), seed="cmd-2", prepared=cert("b.example.com", key_id="k2")
    )
    with pytest.raises(Rejected) as e:
        run(state, RemoveCert(app="demo"))
    assert e.value.code == "endpoint_ambiguous"


def test_destroy_app_releases_every_hostname_and_shreds_every_key() -> None:
    state, _ = run(
        app_with("a.example.com", "b.example.com"),
        add_cert(),
        prepared=cert("*.example.com", key_id="k1"),
    )
    assert related_hostnames(state, DestroyApp(app="demo")) == ["a.example.com", "b.example.com"]
    _, d = run(state, DestroyApp(app="demo"))
    assert d.events[0][1].shredded_key_ids == ["k1"]
    assert [e for _, e in d.events[1:]] == [
        HostnameReleased(app="demo", hostname="a.example.com"),
        HostnameReleased(app="demo", hostname="b.example.com"),
    ]


def test_endpoint_names_are_derived_from_the_command_id() -> None:
    _, a = run(app_with(), add_cert(bypass=True), seed="same", prepared=cert("a.example.com"))
    _, b = run(app_with(), add_cert(bypass=True), seed="same", prepared=cert("a.example.com"))
    assert a.events[-1][1].endpoint == b.events[-1][1].endpoint


HOSTS = st.sampled_from(["a.example.com", "b.example.com", "c.other.org"])
COMMANDS = st.one_of(
    st.just("legacy"),
    HOSTS.map(lambda h: AddDomain(app="demo", hostname=h)),
    HOSTS.map(lambda h: RemoveDomain(app="demo", hostname=h)),
    st.just("addcert"),
    st.just("addcert-a"),  # a certificate for a.example.com only
    st.just(RemoveCert(app="demo")),
    st.integers(0, 3).map(lambda i: ("remove", i)),  # the i-th endpoint, by name
    st.tuples(st.just("move"), HOSTS, st.integers(0, 3), st.booleans()),  # domains:update
    st.tuples(st.just("update"), st.integers(0, 3), st.booleans()),  # to a.example.com only
    st.tuples(HOSTS, st.booleans()).map(
        lambda v: VerifyDns(app="demo", hostname=v[0], verified=v[1])
    ),
)


def materialize(command, state: AppState, i: int):  # type: ignore[no-untyped-def]
    """A command of the strategy, naming endpoints that exist now; None when it cannot."""
    names = list(state.endpoints)
    if command == "legacy":
        return add_cert(endpoint_type=EndpointType.ENDPOINT), cert("*.example.com", key_id=f"k{i}")
    if command == "addcert":
        return add_cert(), cert("*.example.com", key_id=f"k{i}")
    if command == "addcert-a":
        return add_cert(bypass=True), cert("a.example.com", key_id=f"k{i}")
    if isinstance(command, tuple) and names:
        if command[0] == "remove":
            return RemoveCert(app="demo", name=names[command[1] % len(names)]), None
        if command[0] == "update":
            name, bypass = names[command[1] % len(names)], command[2]
            update = UpdateCert(
                app="demo", name=name, certificates=[b"x"], key=SEALED, bypass=bypass
            )
            return update, cert("a.example.com", key_id=f"u{i}")
        _, host, index, bypass = command
        name = names[index % len(names)]
        return UpdateDomain(app="demo", hostname=host, endpoint=name, bypass=bypass), None
    if isinstance(command, tuple):
        return None
    return command, None


@pytest.mark.parametrize("persistent_from", [app_aggregate.PERSISTENT_FROM, 2])
@settings(max_examples=200, deadline=None)
@given(commands=st.lists(COMMANDS, max_size=25))
def test_any_command_sequence_keeps_the_state_consistent(persistent_from, commands) -> None:
    # With a threshold of 2 the domains turn into a persistent map almost at once, so the
    # same properties are checked on both representations.
    saved, app_aggregate.PERSISTENT_FROM = app_aggregate.PERSISTENT_FROM, persistent_from
    try:
        check_command_sequence(commands)
    finally:
        app_aggregate.PERSISTENT_FROM = saved


def check_command_sequence(commands) -> None:  # type: ignore[no-untyped-def]
    state = app_with()
    routed = state  # folded as router_config folds: without DNS verification results
    for i, drawn in enumerate(commands):
        made = materialize(drawn, state, i)
        if made is None:
            continue
        command, prepared = made
        before = state
        try:
            state, decision = run(state, command, seed=f"cmd-{i}", prepared=prepared)
        except Rejected:
            continue
        # the cheap change detection the router_config projection uses misses nothing,
        # across a command and event by event (with the event's O(1) shortcut)
        old, new = before.serving(), state.serving()
        differ = {h for h in old.keys() | new.keys() if old.get(h) is not new.get(h)}
        assert differ <= hosts_changed(before, state)
        step = before
        for stream, event in decision.events:
            if not stream.startswith("app-"):
                continue
            after = evolve(step, event)
            old, new = step.serving(), after.serving()
            differ = {h for h in old.keys() | new.keys() if old.get(h) is not new.get(h)}
            assert differ <= hosts_changed(step, after, event) <= hosts_changed(step, after)
            step = after
            if not isinstance(event, DnsVerified):
                routed = evolve(routed, event)
        assert step == state
        # what routers serve never depends on DNS verification: router_config skips it
        assert routed.serving() == state.serving()
        # what a replay shows agrees with the state's own answers
        summary = app_summary(state, lambda host: None)
        for host in state.domains:
            e = state.endpoint_for(host)
            assert summary["domains"][host]["endpoint"] == (e.name if e else None)  # type: ignore[index]
        serving = state.serving()
        for name in state.endpoints:
            assert summary["endpoints"][name]["domains"] == state.served_by(name)  # type: ignore[index]
            assert state.served_by(name) == sorted(h for h, e in serving.items() if e.name == name)
        for domain in state.domains.values():
            assert domain.endpoint is None or domain.endpoint in state.endpoints


def test_an_app_with_many_domains_folds_without_touching_its_earlier_states() -> None:
    # Past PERSISTENT_FROM the domains live in a persistent map: each event shares the rest.
    # The gateway's cache and a retried decide still hold earlier states, which must not move.
    state, states = app_with(), []
    hosts = [f"h{i}.example.com" for i in range(3 * app_aggregate.PERSISTENT_FROM)]
    for host in hosts:
        states.append(state)
        state = evolve(state, DomainAdded(app="demo", hostname=host))
    assert [len(s.domains) for s in states] == list(range(len(hosts)))
    assert sorted(state.domains) == sorted(hosts)
    grown = state
    state, _ = run(state, add_cert(), prepared=cert("*.example.com"))
    (name,) = state.endpoints
    assert all(d.endpoint == name for d in state.domains.values())
    assert all(d.endpoint is None for d in grown.domains.values())
    state = evolve(state, DomainRemoved(app="demo", hostname=hosts[0]))
    assert hosts[0] not in state.domains and hosts[0] in grown.domains
    assert len(state.domains) == len(hosts) - 1
