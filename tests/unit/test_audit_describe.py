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


def test_a_long_list_of_hostnames_is_cut_to_a_readable_line() -> None:
    moved = {f"h{i:05d}.example.com": "older-1" for i in range(10_000)}
    _, _, summary = describe(
        CertRemoved(app="shop", endpoint="newer-3", shredded_key_ids=["k"], reassigned=moved)
    )
    assert summary.endswith(
        "; h00000.example.com, h00001.example.com, h00002.example.com, h00003.example.com,"
        " h00004.example.com, h00005.example.com, h00006.example.com, h00007.example.com,"
        " h00008.example.com, h00009.example.com and 9,990 more now served by older-1"
    )
