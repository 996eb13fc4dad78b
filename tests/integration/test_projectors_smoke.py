"""A first look at the read side: commands in, every projection out."""

from __future__ import annotations

from events.app import CreateApp
from events.domain import AddDomain
from events.replies import AppView
from tests.conftest import projected
from tests.integration.helpers import add_cert


async def test_commands_reach_every_projection(cp, projectors, ca, settings) -> None:
    await cp.command(CreateApp(app="shop"))
    await cp.command(AddDomain(app="shop", hostname="www.example.com"))
    c = ca.leaf("www.example.com")
    reply = await add_cert(cp, "shop", [c.cert_pem, ca.intermediate.cert_pem], c.key_pem)
    await projected(cp, reply.position)
    view = await cp.query("shop", "app")
    assert isinstance(view, AppView), view
    [domain] = view.domains
    assert domain.dns_target.endswith("." + settings.dns_zone) and domain.endpoint
    assert view.endpoints[0].domains == ["www.example.com"]
