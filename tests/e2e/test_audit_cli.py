"""The auditor's commands, run as an auditor would, against services run as processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import pytest

from services.storage.database import database_name
from tests.conftest import _admin, run_cli
from tests.e2e.conftest import fingerprints, presented_chain, s_client
from tests.e2e.test_router import ok, shop_with_cert, update_cert

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command (apt-get install openssl)"
)


def now() -> str:
    time.sleep(0.05)  # strictly after what came before, strictly before what comes next
    stamp = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)
    return stamp


def verified(settings, *args: str) -> str:
    """`audit:verify` once the sealer has covered the log (it signs within a second here)."""
    for _ in range(100):
        result = run_cli(settings, "audit:verify", *args)
        if result.returncode == 0:
            return result.stdout
        assert "not covered by any signed checkpoint" in result.stderr, result.stderr
        time.sleep(0.1)
    raise AssertionError(result.stderr)


def test_audit_served_agrees_with_what_the_router_served(
    settings, projector_process, start_router, ca, tmp_path
) -> None:
    router = start_router()
    before_anything = now()
    first, added = shop_with_cert(settings, ca, tmp_path)
    seen = {"added": presented_chain(router.https_port, "www.shop.test")[0]}
    moments = {"added": now()}
    second = update_cert(settings, "shop", ca, tmp_path, "www.shop.test")
    seen["updated"] = presented_chain(router.https_port, "www.shop.test")[0]
    moments["updated"] = now()
    ok(settings, "certs:remove", "-a", "shop", "--confirm", "shop", "--wait")
    assert "unrecognized name" in s_client(router.https_port, "www.shop.test").stderr
    moments["removed"] = now()
    assert seen == {"added": fingerprints(first.cert_pem)[0],
                    "updated": fingerprints(second.cert_pem)[0]}  # fmt: skip

    for moment, fingerprint in [*seen.items(), ("removed", None)]:
        answer = json.loads(
            ok(settings, "audit:served", "www.shop.test", "--at", moments[moment], "--json").stdout
        )
        served = answer["served"]
        assert (served and served["endpoint"]["fingerprint_sha256"]) == fingerprint, moment
    text = ok(settings, "audit:served", "WWW.shop.test", "--at", moments["added"]).stdout
    assert f"since           position {added['position']} (cert.added" in text
    assert "app             shop" in text and "/CN=www.shop.test" in text

    # before the app existed, a replay shows nothing of it; at "added" it shows it whole
    empty = json.loads(ok(settings, "audit:replay", "-a", "shop", "--at", before_anything,
                          "--json").stdout)  # fmt: skip
    assert empty["apps"] == []
    then = ok(settings, "audit:replay", "-a", "shop", "--at", moments["added"]).stdout
    assert "=== shop" in then and "www.shop.test" in then and settings.dns_zone in then
    assert fingerprints(first.cert_pem)[0] in then and "PRIVATE" not in then

    history = ok(settings, "audit:history", "-a", "shop").stdout
    assert "app.created" in history and "+ domain www.shop.test" in history
    assert "cert.updated" in history and "fingerprint_sha256" in history
    assert history.count("- endpoint") == 1  # the removal


def test_checkpoints_prove_and_a_bundle_verifies_after_the_database_is_dropped(
    settings, projector_process, ca, tmp_path, db_url
) -> None:
    ok(settings, "apps:create", "shop")
    for i in range(12):
        ok(settings, "domains:add", f"d{i}.shop.test", "-a", "shop")
    out = verified(settings)
    assert "the hash chain is intact" in out and "Writer MACs checked" in out
    old = tmp_path / "old.json"
    heads = json.loads(ok(settings, "audit:checkpoints", "--json").stdout)
    old.write_text(json.dumps(heads[0]))
    new = tmp_path / "new.json"
    ok(settings, "audit:checkpoints", "--out", str(new))
    consistent = ok(settings, "audit:consistency", str(old), str(new)).stdout
    assert f"extends the one of size {heads[0]['size']}" in consistent
    proof = json.loads(ok(settings, "audit:prove", "3", "--checkpoint", str(new)).stdout)
    assert proof["position"] == 3 and proof["proof"]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(new.read_text().replace('"size": ', '"size": 1'))
    refused = run_cli(settings, "audit:prove", "3", "--checkpoint", str(tampered))
    assert refused.returncode == 1 and "cannot be trusted" in refused.stderr

    bundle = tmp_path / "bundle"
    exported = ok(settings, "audit:export", "--until", dt.datetime.now(dt.UTC).isoformat(),
                  "--out", str(bundle)).stdout  # fmt: skip
    assert "Exported positions 1–" in exported
    projector_process.stop()
    name = database_name(db_url)  # (embedded servers' URLs end with a socket path)
    asyncio.run(_admin(db_url, f'drop database "{name}" with (force)'))

    offline = run_cli(settings, "audit:verify", "--bundle", str(bundle))
    assert offline.returncode == 0, offline.stderr
    assert "the hash chain is intact" in offline.stdout
    # a bundle with one byte changed does not verify, and says where
    lines = (bundle / "events.jsonl").read_text().splitlines()
    assert ".shop.test" in lines[4]
    lines[4] = lines[4].replace(".shop.test", ".shop.tesT", 1)
    (bundle / "events.jsonl").write_text("\n".join(lines) + "\n")
    broken = run_cli(settings, "audit:verify", "--bundle", str(bundle))
    assert broken.returncode == 1 and "TAMPERED: position 5" in broken.stderr
    assert Path(bundle / "README.txt").exists()
