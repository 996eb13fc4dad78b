"""The command path end to end through NATS and PostgreSQL, with an in-process gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import uuid

import nats
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization

from events.app import CreateApp, DestroyApp
from events.codec import COMMAND_REPLY_DECODER, decode_event
from events.domain import AddDomain, RemoveDomain, VerifyDns
from events.endpoint import (
    CertAdded,
    DestroyEndpoint,
    EncryptedKey,
    EndpointType,
    RemoveCert,
)
from events.replies import Accepted, AppsView, AppView, Rejected
from services.cli.client import ControlPlane
from services.devcerts import DevCA, key_pem, new_key
from services.domain.key_envelope import DataKey, MasterKey
from services.gateway.service import Gateway
from tests.conftest import projected, run_cli
from tests.integration.helpers import add_cert, count_events, fetch, update_cert

NOW = dt.datetime.now(dt.UTC)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def leaf(ca: DevCA):
    return ca.leaf("www.example.com", "api.example.com")


async def test_every_command_happy_path(
    cp: ControlPlane, ca: DevCA, leaf, db_url: str, projectors
) -> None:
    created = await cp.command(CreateApp(app="shop"))
    assert isinstance(created, Accepted) and (
        created.stream,
        created.version,
        created.position,
    ) == ("app-shop", 1, 1)
    added = await cp.command(AddDomain(app="shop", hostname="WWW.example.com"))
    assert isinstance(added, Accepted) and added.position == 3  # DomainAdded + HostnameClaimed
    verified = await cp.command(VerifyDns(app="shop", hostname="www.example.com", verified=True))
    assert isinstance(verified, Accepted)

    cert = await add_cert(cp, "shop", [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
    assert isinstance(cert, Accepted), cert
    [event] = cert.events
    assert isinstance(event, CertAdded) and event.domains == ["www.example.com"]
    assert event.certificate.trusted and event.chain_pem.startswith(leaf.cert_pem.decode())
    await projected(cp, cert.position)
    view = await cp.query("shop", "app")
    assert isinstance(view, AppView)
    assert [(d.hostname, d.endpoint, d.dns_verified) for d in view.domains] == [
        ("www.example.com", event.endpoint, True)
    ]
    assert view.endpoints[0].certificate.fingerprint_sha256 == event.certificate.fingerprint_sha256

    newer = ca.leaf("www.example.com")
    updated = await update_cert(
        cp, "shop", [newer.cert_pem, ca.intermediate.cert_pem], newer.key_pem
    )
    assert isinstance(updated, Accepted), updated
    await projected(cp, updated.position)
    view = await cp.query("shop", "app")
    assert (
        view.endpoints[0].certificate.chain_fingerprints[0] != event.certificate.fingerprint_sha256
    )

    legacy = await add_cert(
        cp,
        "shop",
        [leaf.cert_pem, ca.intermediate.cert_pem],
        leaf.key_pem,
        endpoint_type=EndpointType.ENDPOINT,
        bypass=True,
    )
    assert isinstance(legacy, Accepted)
    legacy_name = legacy.events[-1].endpoint
    assert isinstance(await cp.command(DestroyEndpoint(app="shop", name=legacy_name)), Accepted)
    assert isinstance(await cp.command(RemoveCert(app="shop", name=event.endpoint)), Accepted)
    assert isinstance(
        await cp.command(RemoveDomain(app="shop", hostname="www.example.com")), Accepted
    )
    apps = await cp.query(None, "apps")
    assert isinstance(apps, AppsView) and [a.name for a in apps.apps] == ["shop"]
    destroyed = await cp.command(DestroyApp(app="shop"))
    assert isinstance(destroyed, Accepted)
    await projected(cp, destroyed.position)
    apps = await cp.query(None, "apps")
    assert apps.apps == []
    # The hostname is free again, for another app.
    await cp.command(CreateApp(app="other"))
    assert isinstance(
        await cp.command(AddDomain(app="other", hostname="www.example.com")), Accepted
    )


def _expired(ca: DevCA):
    c = ca.leaf(
        "www.example.com",
        not_before=NOW - dt.timedelta(days=9),
        not_after=NOW - dt.timedelta(days=1),
    )
    return [c.cert_pem, ca.intermediate.cert_pem], c.key_pem


def _future(ca: DevCA):
    c = ca.leaf("www.example.com", not_before=NOW + dt.timedelta(days=2))
    return [c.cert_pem, ca.intermediate.cert_pem], c.key_pem


def _weak(ca: DevCA):
    c = ca.leaf("www.example.com", key_kind="rsa1024")
    return [c.cert_pem, ca.intermediate.cert_pem], c.key_pem


def _encrypted(ca: DevCA):
    c = ca.leaf("www.example.com")
    return [c.cert_pem], c.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


BUNDLE_REFUSALS = {
    "key_mismatch": lambda ca: ([ca.leaf("www.example.com").cert_pem], key_pem(new_key())),
    "cert_expired": _expired,
    "cert_not_yet_valid": _future,
    "key_too_weak": _weak,
    "key_encrypted": _encrypted,
    "unparsable": lambda ca: ([b"this is not a certificate"], key_pem(new_key())),
    "bundle_too_large": lambda ca: (
        [b"-----BEGIN CERTIFICATE-----\n" + b"A" * 300_000],
        key_pem(new_key()),
    ),
    "chain_broken": lambda ca: (
        [
            (c := ca.leaf("www.example.com")).cert_pem,
            DevCA.create("stranger").intermediate.cert_pem,
        ],
        c.key_pem,
    ),
}


@pytest.mark.parametrize("code", list(BUNDLE_REFUSALS))
async def test_bad_bundles_are_refused_and_append_nothing(cp, ca, db_url, code) -> None:
    await cp.command(CreateApp(app="shop"))
    before = await count_events(db_url)
    certificates, key = BUNDLE_REFUSALS[code](ca)
    reply = await add_cert(cp, "shop", certificates, key)
    assert isinstance(reply, Rejected) and reply.code == code
    assert len(reply.message) > 30 and "PRIVATE KEY" not in reply.message
    assert await count_events(db_url) == before


async def test_domain_rules_are_enforced_across_apps(cp, db_url) -> None:
    await cp.command(CreateApp(app="alpha"))
    await cp.command(CreateApp(app="beta"))
    assert isinstance(
        await cp.command(AddDomain(app="alpha", hostname="shared.example.com")), Accepted
    )
    before = await count_events(db_url)
    taken = await cp.command(AddDomain(app="beta", hostname="Shared.Example.com."))
    assert isinstance(taken, Rejected) and taken.code == "domain_taken"
    missing = await cp.command(AddDomain(app="gamma", hostname="x.example.com"))
    assert (
        isinstance(missing, Rejected)
        and missing.code == "app_not_found"
        and "apps:create gamma" in missing.message
    )
    assert await count_events(db_url) == before


async def test_concurrent_claims_of_one_hostname_have_one_winner(cp, db_url) -> None:
    apps = [f"app-{i:02d}" for i in range(12)]
    await asyncio.gather(*(cp.command(CreateApp(app=a)) for a in apps))
    replies = await asyncio.gather(
        *(cp.command(AddDomain(app=a, hostname="hot.example.com")) for a in apps)
    )
    assert sum(isinstance(r, Accepted) for r in replies) == 1
    assert {r.code for r in replies if isinstance(r, Rejected)} == {"domain_taken"}
    rows = await fetch(
        db_url, "select count(*) from events where stream_id = 'hostname-hot.example.com'"
    )
    assert rows[0][0] == 1


async def test_the_same_command_id_appends_once_and_answers_the_same(cp, settings, db_url) -> None:
    command_id = str(uuid.uuid4())
    first = await cp.command(CreateApp(app="shop"), command_id=command_id)
    second = await cp.command(CreateApp(app="shop"), command_id=command_id)
    assert isinstance(first, Accepted) and first == second
    assert await count_events(db_url) == 1
    # And after a restart, by another gateway process that has an empty cache.
    async with Gateway(dataclasses.replace(settings)) as _:
        third = await cp.command(CreateApp(app="shop"), command_id=command_id)
    assert third == first
    assert await count_events(db_url) == 1


async def test_a_command_id_in_any_uuid_spelling_is_one_command_and_harms_no_other(
    cp, db_url
) -> None:
    """Clients may spell a UUID as Python's `uuid` reads it (urn:uuid:, braces, upper case, no
    hyphens). The log records the canonical form, a repeat in another spelling is the same
    command, and no spelling fails the commands group-committed with it (PostgreSQL's uuid
    type refuses the urn: form, which once failed a whole batch)."""
    command_id = uuid.uuid4()
    spellings = [command_id.urn, "{" + str(command_id).upper() + "}", command_id.hex]
    replies = [await cp.command(CreateApp(app="shop"), command_id=s) for s in spellings]
    assert all(isinstance(r, Accepted) for r in replies) and replies.count(replies[0]) == 3
    rows = await fetch(db_url, "select command_id::text from events")
    assert [r[0] for r in rows] == [str(command_id)]

    together = await asyncio.gather(
        *(cp.command(CreateApp(app=f"urn-{i}"), command_id=uuid.uuid4().urn) for i in range(8)),
        *(cp.command(CreateApp(app=f"plain-{i}")) for i in range(8)),
    )
    assert all(isinstance(r, Accepted) for r in together), together
    assert await count_events(db_url) == 17


async def test_malformed_commands_are_refused_with_the_reason(settings, gateway, db_url) -> None:
    nc = await nats.connect(settings.nats_url)
    subject = f"{settings.prefix}.cmd.shop.CreateApp"
    bad = [
        (b'{"id":"x","actor":"a","command":{"type":"app.create","app":"shop","extra":1}}', "extra"),
        (b'{"id":"x","actor":"a","command":{"type":"app.explode","app":"shop"}}', "app.explode"),
        # a class name where the tag goes: the tags are listed, and this one's named
        (
            b'{"id":"x","actor":"a","command":{"type":"CreateApp","app":"shop"}}',
            "one of app.create, app.destroy, domain.add",
        ),
        (b'{"id":"x","actor":"a","command":{"type":"CreateApp","app":"shop"}}', "is app.create"),
        (b"not json", "could not be read"),
        (
            b'{"id":"not-a-uuid","actor":"a","command":{"type":"app.create","app":"shop"}}',
            "not a UUID",
        ),
    ]
    fine = {"id": str(uuid.uuid4()), "actor": "a", "command": {"type": "app.create", "app": "shop"}}
    # what goes into every event's metadata and the gateway's log lines: short, printable
    for field, value, words in [
        ("actor", "", "actor is empty"),
        ("actor", "eve\n2026-11-29 INFO gateway ready", "contains control characters"),
        ("actor", "a" * 100_000, "100,000 characters long"),
        ("correlation_id", "c" * 300, "correlation id"),
        ("causation_id", "tab\there", "causation id"),
    ]:
        bad.append((json.dumps({**fine, field: value}).encode(), words))
    for payload, words in bad:
        reply = COMMAND_REPLY_DECODER.decode((await nc.request(subject, payload, timeout=5)).data)
        assert isinstance(reply, Rejected) and words in reply.message, reply
    await nc.close()
    assert await count_events(db_url) == 0


async def test_a_key_sealed_to_another_gateway_is_refused(cp, ca) -> None:
    await cp.command(CreateApp(app="shop"))
    c = ca.leaf("www.example.com")
    from events.endpoint import AddCert
    from services.domain.key_envelope import public_bytes, seal_for_gateway

    stranger = public_bytes(MasterKey.generate().transport_private_key().public_key())
    reply = await cp.command(
        AddCert(app="shop", certificates=[c.cert_pem], key=seal_for_gateway(c.key_pem, stranger))
    )
    assert isinstance(reply, Rejected) and reply.code == "sealed_key_invalid"


async def test_removing_a_cert_shreds_its_key(cp, ca, settings, db_url) -> None:
    await cp.command(CreateApp(app="shop"))
    c = ca.leaf("www.example.com")
    added = await add_cert(
        cp, "shop", [c.cert_pem, ca.intermediate.cert_pem], c.key_pem, bypass=True
    )
    assert isinstance(added, Accepted)
    master = MasterKey.from_text(settings.master_key)

    async def stored_key() -> EncryptedKey:
        [row] = await fetch(
            db_url, "select type, schema_version, data::text from events where type = 'cert.added'"
        )
        return decode_event(row[0], row[1], row[2]).key

    encrypted = await stored_key()
    [wrapped] = await fetch(
        db_url, "select wrapped from data_keys where key_id = $1::uuid", encrypted.key_id
    )
    opened = DataKey.unwrap(encrypted.key_id, bytes(wrapped[0]), master).decrypt(encrypted)
    assert digest(opened) == digest(c.key_pem)  # compare digests: a failure must not print a key

    assert isinstance(await cp.command(RemoveCert(app="shop")), Accepted)
    remaining = await fetch(db_url, "select key_id::text, wrapped from data_keys")
    assert all(k != encrypted.key_id for k, _ in remaining)
    for key_id, wrapped in remaining:  # no key the system still has opens it
        with pytest.raises(InvalidTag):
            DataKey(
                encrypted.key_id, DataKey.unwrap(key_id, bytes(wrapped), master).secret
            ).decrypt(encrypted)
    assert (await stored_key()) == encrypted  # the ciphertext itself stays in the log


async def test_concurrent_commands_get_dense_positions(cp, gateway) -> None:
    apps = [f"app-{i:03d}" for i in range(200)]
    replies = await asyncio.gather(*(cp.command(CreateApp(app=a)) for a in apps))
    assert all(isinstance(r, Accepted) for r in replies)
    assert sorted(r.position for r in replies) == list(range(1, 201))
    assert gateway.committer.requests == 200


async def test_small_commands_on_known_apps_take_the_fast_path_and_the_rest_the_slow_one(
    cp, gateway, db_url
) -> None:
    """Commands decided on states in hand skip the slow path's machinery (`submit_known`);
    a new app, a refusal and a repeated command id still get the slow path's answers."""
    await cp.command(CreateApp(app="shop"))  # an app not yet known: read, the slow way
    assert gateway.fast_commands == 0
    hosts = [f"h{i}.shop.test" for i in range(50)]
    replies = await asyncio.gather(*(cp.command(AddDomain(app="shop", hostname=h)) for h in hosts))
    assert all(isinstance(r, Accepted) for r in replies), replies
    assert sorted(r.position for r in replies) == list(range(3, 2 + 2 * len(hosts) + 1, 2))
    assert gateway.fast_commands == len(hosts)
    # refused on facts, by the slow path: the message names the domain, nothing appended
    events = await count_events(db_url)
    refused = await cp.command(AddDomain(app="shop", hostname="h7.shop.test"))
    assert isinstance(refused, Rejected) and refused.code == "domain_exists"
    assert "h7.shop.test" in refused.message
    # a client's retry of an accepted command: the fast path's append finds the id in the log
    # (a duplicate), and the slow path answers with the original reply
    command_id = str(uuid.uuid4())
    first = await cp.command(VerifyDns(app="shop", hostname="h1.shop.test", verified=True),
                             command_id=command_id)  # fmt: skip
    again = await cp.command(VerifyDns(app="shop", hostname="h1.shop.test", verified=True),
                             command_id=command_id)  # fmt: skip
    assert isinstance(first, Accepted) and again == first
    assert await count_events(db_url) == events + 1
    assert gateway.fast_in_flight == 0


async def test_a_bug_while_deciding_is_answered_and_frees_the_commands_slot(
    settings, monkeypatch, db_url
) -> None:
    """An unexpected exception deciding a command on the fast path (a bug) still gets the
    client an answer, the slow path's internal_error, and gives back the command's slot: with
    two slots, four such commands and then a good one are all answered."""
    from services.domain import app as app_aggregate

    decide = app_aggregate.decide

    def buggy(state, hostnames, command, **kwargs):  # type: ignore[no-untyped-def]
        if getattr(command, "hostname", "").startswith("bug"):
            raise RuntimeError("a bug in decide")
        return decide(state, hostnames, command, **kwargs)

    async with (
        Gateway(settings, max_in_flight=2) as gateway,
        ControlPlane(settings.nats_url, settings.prefix, actor="test") as cp,
    ):
        assert isinstance(await cp.command(CreateApp(app="shop")), Accepted)
        monkeypatch.setattr(app_aggregate, "decide", buggy)
        for i in range(4):
            reply = await asyncio.wait_for(
                cp.command(AddDomain(app="shop", hostname=f"bug{i}.shop.test")), 5
            )
            assert isinstance(reply, Rejected) and reply.code == "internal_error", reply
        good = await asyncio.wait_for(cp.command(AddDomain(app="shop", hostname="ok.shop.test")), 5)
        assert isinstance(good, Accepted), good
        assert gateway.fast_in_flight == 0
    assert await count_events(db_url) == 3  # the app, and the good domain's two events


async def test_a_second_gateway_in_the_queue_group_shares_the_load(cp, settings, gateway) -> None:
    async with Gateway(settings) as second:
        await asyncio.gather(*(cp.command(CreateApp(app=f"app-{i:03d}")) for i in range(300)))
        assert second.committer.requests > 0 and gateway.committer.requests > 0
        assert second.committer.requests + gateway.committer.requests == 300


async def test_stale_caches_in_two_gateways_resolve_by_version_check(
    cp, settings, gateway, projectors
) -> None:
    async with Gateway(settings) as _second:
        await cp.command(CreateApp(app="shop"))
        replies = await asyncio.gather(
            *(cp.command(AddDomain(app="shop", hostname=f"h{i}.example.com")) for i in range(40))
        )
    assert all(isinstance(r, Accepted) for r in replies), [
        r for r in replies if isinstance(r, Rejected)
    ]
    await projected(cp, max(r.position for r in replies))
    view = await cp.query("shop", "app")
    assert len(view.domains) == 40


async def test_gateways_tell_each_other_what_they_appended(
    cp, settings, gateway, projectors
) -> None:
    """One app's commands, one after the other, land on either gateway at random: without the
    announcements each switch found a stale cache, failed its append and appended again."""
    async with Gateway(settings) as second:
        await cp.command(CreateApp(app="shop"))
        for i in range(40):
            reply = await cp.command(AddDomain(app="shop", hostname=f"h{i}.example.com"))
            assert isinstance(reply, Accepted), reply
        assert second.committer.requests > 5 and gateway.committer.requests > 5  # both served
        conflicts = gateway.handler.conflicts + second.handler.conflicts
    assert conflicts <= 2, f"{conflicts} of 40 commands found a stale cache"
    view = await cp.query("shop", "app")
    assert len(view.domains) == 40


async def _setup_shop(cp, ca) -> None:
    await cp.command(CreateApp(app="shop"))
    await cp.command(AddDomain(app="shop", hostname="www.example.com"))


COMMAND_REFUSALS = {
    "app_exists": lambda cp, ca: cp.command(CreateApp(app="shop")),
    "invalid_app_name": lambda cp, ca: cp.command(CreateApp(app="Shop_1")),
    "app_not_found": lambda cp, ca: cp.command(RemoveCert(app="ghost")),
    "invalid_hostname": lambda cp, ca: cp.command(AddDomain(app="shop", hostname="bad host")),
    "domain_exists": lambda cp, ca: cp.command(AddDomain(app="shop", hostname="WWW.example.com")),
    "domain_not_found": lambda cp, ca: cp.command(
        RemoveDomain(app="shop", hostname="api.example.com")
    ),
    "endpoint_not_found": lambda cp, ca: cp.command(RemoveCert(app="shop")),
    "domain_not_covered": lambda cp, ca: add_cert(
        cp,
        "shop",
        [(c := ca.leaf("www.example.com")).cert_pem, ca.intermediate.cert_pem],
        c.key_pem,
        domains=["shop.other.org"],
    ),
}


@pytest.mark.parametrize("code", list(COMMAND_REFUSALS))
async def test_refused_commands_append_nothing(cp, ca, db_url, code) -> None:
    await _setup_shop(cp, ca)
    before = await count_events(db_url)
    reply = await COMMAND_REFUSALS[code](cp, ca)
    assert isinstance(reply, Rejected) and reply.code == code, reply
    assert len(reply.message) > 30
    assert await count_events(db_url) == before


async def test_a_second_legacy_endpoint_is_refused(cp, ca, db_url) -> None:
    await _setup_shop(cp, ca)
    c = ca.leaf("www.example.com")
    files = [c.cert_pem, ca.intermediate.cert_pem]
    first = await add_cert(cp, "shop", files, c.key_pem, endpoint_type=EndpointType.ENDPOINT)
    assert isinstance(first, Accepted)
    before = await count_events(db_url)
    second = await add_cert(cp, "shop", files, c.key_pem, endpoint_type=EndpointType.ENDPOINT)
    assert isinstance(second, Rejected) and second.code == "legacy_endpoint_exists"
    assert await count_events(db_url) == before


async def test_a_cert_covering_no_domain_is_accepted_with_a_warning(cp, ca) -> None:
    await _setup_shop(cp, ca)
    c = ca.leaf("api.other.org")
    reply = await add_cert(cp, "shop", [c.cert_pem, ca.intermediate.cert_pem], c.key_pem)
    assert isinstance(reply, Accepted) and "covers none" in reply.warnings[0]
    assert reply.events[-1].domains == []


async def test_a_restarted_gateway_destroys_an_app_with_many_domains(settings, db_url) -> None:
    """A gateway with an empty cache reads the hostname claims a destroy must release, rather
    than taking them for new and meeting one version conflict per hostname."""
    hosts = [f"h{i}.example.com" for i in range(40)]
    async with (
        Gateway(settings),
        ControlPlane(settings.nats_url, settings.prefix, actor="test") as cp,
    ):
        await cp.command(CreateApp(app="big"))
        for reply in await asyncio.gather(
            *(cp.command(AddDomain(app="big", hostname=h)) for h in hosts)
        ):
            assert isinstance(reply, Accepted), reply
    async with (
        Gateway(settings) as restarted,
        ControlPlane(settings.nats_url, settings.prefix, actor="test") as cp,
    ):
        reply = await cp.command(DestroyApp(app="big"))
        assert isinstance(reply, Accepted), reply
        assert restarted.handler.conflicts == 0
        again = await cp.command(AddDomain(app="other", hostname=hosts[0]))
        assert isinstance(again, Rejected) and again.code == "app_not_found"
    released = await fetch(db_url, "select count(*) from events where type = 'hostname.released'")
    assert released[0][0] == len(hosts)


async def test_an_accepted_reply_too_large_for_nats_still_arrives(cp, gateway, db_url) -> None:
    """Past the server's message limit the reply leaves its events out and says so, rather
    than never arriving for a command that happened."""
    await cp.command(CreateApp(app="big"))
    hosts = [f"h{i}.example.com" for i in range(40)]
    for h in hosts:
        await cp.command(AddDomain(app="big", hostname=h))
    gateway.nc._max_payload = 2_000  # as if the server allowed only this much
    reply = await cp.command(DestroyApp(app="big"))
    assert isinstance(reply, Accepted) and reply.events == []
    assert "leaves out the command's 41 events" in reply.warnings[-1]
    assert "2,000 bytes" in reply.warnings[-1]
    released = await fetch(db_url, "select count(*) from events where type = 'hostname.released'")
    assert released[0][0] == len(hosts)


async def test_a_listing_larger_than_one_nats_message_arrives_whole(
    cp, settings, gateway, projectors
) -> None:
    """`domains` for an app of thousands of domains is more than NATS's message limit: the
    gateway sends it in parts and both the client library and the real CLI put it together."""
    await cp.command(CreateApp(app="big"))
    hosts = sorted(f"h{i}.example.com" for i in range(60))
    for h in hosts:
        last = await cp.command(AddDomain(app="big", hostname=h))
    await projected(cp, last.position)
    gateway.nc._max_payload = 2_000  # as if the server allowed only this much
    view = await cp.query("big", "app")
    assert [d.hostname for d in view.domains] == hosts
    assert all(d.dns_target.endswith(settings.dns_zone) for d in view.domains)
    listed = await asyncio.to_thread(run_cli, settings, "domains", "-a", "big", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(d["hostname"] for d in json.loads(listed.stdout)) == hosts


async def test_one_apps_concurrent_commands_share_batches_and_stay_consistent(
    cp, gateway, db_url
) -> None:
    """An app's next command is decided on the state its pending ones make, so 64 clients on
    one app share batches; refusals are still decided on appended facts only."""
    await cp.command(CreateApp(app="one"))
    hosts = [f"h{i}.example.com" for i in range(300)]
    replies = await asyncio.gather(
        *(cp.command(AddDomain(app="one", hostname=h)) for h in hosts),
        # the same hostnames again, with new command ids, while the first are in flight
        *(cp.command(AddDomain(app="one", hostname=h)) for h in hosts[:30]),
        *(cp.command(RemoveDomain(app="one", hostname=h)) for h in hosts[30:40]),
    )
    accepted = [r for r in replies if isinstance(r, Accepted)]
    refused = [r for r in replies if isinstance(r, Rejected)]
    assert {r.code for r in refused} <= {"domain_exists", "domain_not_found"}, refused
    # each hostname added once; a removal either found its domain or was refused on facts
    added = await fetch(db_url, "select count(*) from events where type = 'domain.added'")
    assert added[0][0] == len(hosts)
    removed = await fetch(db_url, "select count(*) from events where type = 'domain.removed'")
    assert removed[0][0] + sum(r.code == "domain_not_found" for r in refused) == 10
    assert len(accepted) == len(hosts) + removed[0][0]
    versions = await fetch(
        db_url, "select stream_version from events where stream_id = 'app-one' order by 1"
    )
    assert [v[0] for v in versions] == list(range(1, len(versions) + 1))
    assert sum(r.code == "domain_exists" for r in refused) == 30
    assert gateway.committer.batches < len(accepted) / 4  # shared, not one append each


async def test_two_gateways_pipelining_one_apps_commands_never_build_on_a_failed_one(
    cp, settings, gateway, db_url
) -> None:
    """Each gateway decides the app's next command on its pending ones. When the other
    gateway wins the app's stream, a pending command fails; those decided on top of it must
    fail too and decide again, or a domain would be added on a state that never was."""
    async with Gateway(settings) as _second:
        await cp.command(CreateApp(app="shop"))
        hosts = [f"h{i}.example.com" for i in range(300)]
        replies = await asyncio.gather(
            *(cp.command(AddDomain(app="shop", hostname=h)) for h in hosts)
        )
    assert all(isinstance(r, Accepted) for r in replies), [
        r for r in replies if isinstance(r, Rejected)
    ][:3]
    rows = await fetch(
        db_url,
        "select stream_version, data::json->>'hostname' from events"
        " where stream_id = 'app-shop' order by stream_version",
    )
    assert [r[0] for r in rows] == list(range(1, len(hosts) + 2))
    assert sorted(r[1] for r in rows[1:]) == sorted(hosts)  # each added once


async def test_two_gateways_contending_for_one_app_hand_its_commands_to_one_of_them(
    cp, settings, gateway, db_url
) -> None:
    """Both gateways pipeline the app's commands and make each other's fail; one hands the
    app's commands to the other (`affinity`), and nothing runs out of retries."""
    async with Gateway(settings) as second:
        await cp.command(CreateApp(app="shop"))
        hosts = [f"h{i}.example.com" for i in range(400)]
        replies = await asyncio.gather(
            *(cp.command(AddDomain(app="shop", hostname=h)) for h in hosts)
        )
        forwarded = {gateway.id: gateway.forwarded, second.id: second.forwarded}
    assert all(isinstance(r, Accepted) for r in replies), [
        r for r in replies if isinstance(r, Rejected)
    ][:3]
    assert sum(forwarded.values()) > 0, forwarded
    added = await fetch(db_url, "select count(*) from events where type = 'domain.added'")
    assert added[0][0] == len(hosts)


async def test_a_command_for_an_owner_that_stopped_is_decided_where_it_arrived(
    cp, settings, gateway, db_url
) -> None:
    """The gateway that owned a contended app is gone: the command is not lost with it."""
    await cp.command(CreateApp(app="shop"))
    gone = "0" * 16
    gateway.affinity.wrote(gone, ["app-shop"])  # as if it had won the app's stream
    assert gateway.affinity.contended("shop") == gone
    reply = await cp.command(AddDomain(app="shop", hostname="www.shop.test"))
    assert isinstance(reply, Accepted), reply
    assert gateway.forwarded == 0 and gateway.affinity.owner("shop") is None


async def test_two_gateways_refuse_a_repeated_domain_on_facts_without_running_out_of_retries(
    cp, settings, gateway, db_url
) -> None:
    """Both gateways pipeline one app's commands and take its stream from each other, while
    each hostname is also asked for a second time under a new command id. A second request
    refused on a pending state and then found acceptable on the appended one (its twin lost
    the stream) is decided once more on what is pending: never a "busy" refusal, each
    hostname added exactly once, every duplicate refused as such."""
    async with Gateway(settings):
        await cp.command(CreateApp(app="shop"))
        hosts = [f"h{i}.example.com" for i in range(200)]
        replies = await asyncio.gather(
            *(cp.command(AddDomain(app="shop", hostname=h)) for h in hosts),
            *(cp.command(AddDomain(app="shop", hostname=h)) for h in hosts),
        )
    refused = [r for r in replies if isinstance(r, Rejected)]
    assert {r.code for r in refused} == {"domain_exists"}, [r for r in refused][:3]
    assert len(refused) == len(hosts)
    added = await fetch(db_url, "select count(*) from events where type = 'domain.added'")
    assert added[0][0] == len(hosts)


async def test_one_apps_concurrent_certificates_share_batches_without_conflicts(
    cp, ca, gateway, db_url
) -> None:
    """AddCerts finish validation in bundle workers a moment apart, and the group commit
    pauses for them; one app's next certificate must still wait for the batch it rests on."""
    await cp.command(CreateApp(app="shop"))
    leaf = ca.leaf("www.shop.test")
    replies = await asyncio.gather(
        *(
            add_cert(cp, "shop", [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
            for _ in range(64)
        )
    )
    assert all(isinstance(r, Accepted) for r in replies), [
        r for r in replies if isinstance(r, Rejected)
    ][:3]
    assert gateway.handler.conflicts == 0
    added = await fetch(db_url, "select count(*) from events where type = 'cert.added'")
    assert added[0][0] == 64
