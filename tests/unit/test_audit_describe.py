"""The audit view's one-line summaries: what changed, never key material."""

from __future__ import annotations

from events.endpoint import CertRemoved, EndpointDestroyed
from services.projectors.audit import describe


def test_a_removal_names_where_its_hostnames_went() -> None:
    moved = {"www.example.com": "older-1", "api.example.com": "older-1", "x.example.org": "b-2"}
    app, obj, summary = describe(
        CertRemoved(app="shop", endpoint="newer-3", shredded_key_ids=["k"], reassigned=moved)
    )
    assert (app, obj) == ("shop", "newer-3")
    assert summary == (
        "certificate removed; private key crypto-shredded;"
        " api.example.com, www.example.com now served by older-1; x.example.org now served by b-2"
    )
    _, _, summary = describe(EndpointDestroyed(app="shop", endpoint="e-1"))
    assert summary == "endpoint destroyed; private key crypto-shredded"
