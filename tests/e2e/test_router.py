"""The reference router, end to end: gateway, projectors and routers as separate processes,
checked with the clients the Heroku docs tell users to use (`openssl s_client`, `curl`)."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from services.devcerts import DevCA
from tests.conftest import run_cli
from tests.e2e.conftest import fingerprints, presented_chain, s_client

# Real clients, as the Heroku docs tell users to check: skipped (saying so) only on a machine
# without them; CI's machine has both.
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None,
    reason="needs the openssl and curl commands (apt-get install openssl curl)",
)


def ok(settings, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(settings, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def add_cert(settings, app: str, ca: DevCA, tmp_path: Path, *hosts: str, **kw: str):
    """certs:add --wait with a fresh leaf for `hosts`; returns (leaf, accepted reply)."""
    leaf = ca.leaf(*hosts)
    files = ca.write(tmp_path / f"{app}-{leaf.cert.serial_number}", leaf)
    args = ["certs:add", str(files["chain"]), str(files["crt"]), str(files["key"]), "-a", app]
    for flag, value in kw.items():
        args += [f"--{flag}", value]
    reply = json.loads(ok(settings, *args, "--wait", "--json").stdout)
    return leaf, reply


def shop_with_cert(settings, ca: DevCA, tmp_path: Path, **kw: str):
    """App `shop` with domain www.shop.test served by a fresh certificate (certs:add --wait)."""
    ok(settings, "apps:create", "shop")
    ok(settings, "domains:add", "www.shop.test", "-a", "shop")
    return add_cert(settings, "shop", ca, tmp_path, "www.shop.test", **kw)


def update_cert(settings, app: str, ca: DevCA, tmp_path: Path, *hosts: str):
    """certs:update --wait with a fresh leaf for `hosts`; returns the leaf."""
    leaf = ca.leaf(*hosts)
    files = ca.write(tmp_path / f"{app}-{leaf.cert.serial_number}", leaf)
    ok(settings, "certs:update", str(files["chain"]), str(files["crt"]), str(files["key"]),
       "-a", app, "--confirm", app, "--wait")  # fmt: skip
    return leaf


def tls_client(ca_file: Path, servername: str, port: int) -> http.client.HTTPSConnection:
    """A keep-alive HTTPS client connected to the router with SNI `servername`."""
    context = ssl.create_default_context(cafile=str(ca_file))

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.sock = context.wrap_socket(raw, server_hostname=servername)

    return Connection(servername, port, context=context)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_certs_add_is_served_by_sni_with_exactly_the_uploaded_chain(
    settings, projector_process, start_router, upstream, ca, ca_file, tmp_path
) -> None:
    router = start_router()
    leaf, _ = shop_with_cert(settings, ca, tmp_path)

    chain = presented_chain(router.https_port, "www.shop.test")
    assert chain == fingerprints(leaf.cert_pem, ca.intermediate.cert_pem)

    port = router.https_port
    result = curl("--resolve", f"www.shop.test:{port}:127.0.0.1", "--cacert", str(ca_file),
                  "-H", "X-Forwarded-For: 203.0.113.9", f"https://www.shop.test:{port}/hello")  # fmt: skip
    assert result.returncode == 0, result.stderr  # the chain verifies against the root
    seen = json.loads(result.stdout)
    assert seen["path"] == "/hello"
    assert seen["headers"]["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert seen["headers"]["X-Forwarded-Port"] == str(port)
    assert seen["headers"]["Host"] == f"www.shop.test:{port}"

    plain = curl("-i", "-H", "Host: www.shop.test", f"http://127.0.0.1:{router.http_port}/a?b=1")
    assert "308 Permanent Redirect" in plain.stdout
    assert f"Location: https://www.shop.test:{port}/a?b=1" in plain.stdout
    challenge = curl("-i", f"http://127.0.0.1:{router.http_port}/.well-known/acme-challenge/tok")
    assert "404 Not Found" in challenge.stdout  # served here, not redirected (no token yet)


def test_an_unknown_name_never_gets_another_apps_certificate(
    settings, projector_process, start_router, ca, tmp_path
) -> None:
    router = start_router()
    for app, host in (("alpha", "www.alpha.test"), ("beta", "*.beta.test")):
        ok(settings, "apps:create", app)
        ok(settings, "domains:add", host, "-a", app)
    alpha, _ = add_cert(settings, "alpha", ca, tmp_path, "www.alpha.test")
    beta, _ = add_cert(settings, "beta", ca, tmp_path, "*.beta.test")

    assert (
        presented_chain(router.https_port, "www.alpha.test")[0] == fingerprints(alpha.cert_pem)[0]
    )
    # a wildcard covers exactly one label
    assert presented_chain(router.https_port, "shop.beta.test")[0] == fingerprints(beta.cert_pem)[0]
    for name in ("unknown.test", "alpha.test", "a.shop.beta.test", "beta.test", "WWW.ALPHA.TEST."):
        result = s_client(router.https_port, name)
        if name == "WWW.ALPHA.TEST.":  # case and a trailing dot do not matter to DNS
            assert presented_chain(router.https_port, name)[0] == fingerprints(alpha.cert_pem)[0]
            continue
        assert "unrecognized name" in result.stderr, (name, result.stderr)
        assert "BEGIN CERTIFICATE" not in result.stdout, name
    no_sni = s_client(router.https_port, None, "-noservername")
    assert "unrecognized name" in no_sni.stderr and "BEGIN CERTIFICATE" not in no_sni.stdout


def test_only_tls_12_and_13_are_accepted(
    settings, projector_process, start_router, ca, tmp_path
) -> None:
    router = start_router()
    shop_with_cert(settings, ca, tmp_path)
    for old in ("-tls1", "-tls1_1"):
        # the client is allowed the old protocol (security level 0), the router refuses it
        result = s_client(router.https_port, "www.shop.test", old, "-cipher", "DEFAULT@SECLEVEL=0")
        assert "alert protocol version" in result.stderr, (old, result.stderr)
        assert "BEGIN CERTIFICATE" not in result.stdout
    for good, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        result = s_client(router.https_port, "www.shop.test", good)
        assert f"Protocol  : {name}" in result.stdout or f"New, {name}" in result.stdout, good
    weak = s_client(router.https_port, "www.shop.test", "-tls1_2", "-cipher", "AES128-SHA")
    assert "BEGIN CERTIFICATE" not in weak.stdout, "a non-ECDHE, non-AEAD cipher was accepted"


def test_update_reaches_new_handshakes_while_a_keepalive_connection_keeps_working(
    settings, projector_process, start_router, ca, ca_file, tmp_path
) -> None:
    router = start_router()
    old, _ = shop_with_cert(settings, ca, tmp_path)
    client = tls_client(ca_file, "www.shop.test", router.https_port)
    client.request("GET", "/before")
    assert client.getresponse().read()
    sock_before = client.sock

    new = update_cert(settings, "shop", ca, tmp_path, "www.shop.test")

    assert presented_chain(router.https_port, "www.shop.test")[0] == fingerprints(new.cert_pem)[0]
    client.request("GET", "/after")  # the connection opened before the update still works
    response = client.getresponse()
    assert response.status == 200 and json.loads(response.read())["path"] == "/after"
    assert client.sock is sock_before, "the client had to reconnect"
    old_der = client.sock.getpeercert(binary_form=True)
    assert fingerprints(old.cert_pem)[0] == __import__("hashlib").sha256(old_der).hexdigest()
    client.close()


def test_certs_remove_stops_https_for_the_domain(
    settings, projector_process, start_router, ca, ca_file, tmp_path
) -> None:
    router = start_router()
    shop_with_cert(settings, ca, tmp_path)
    assert presented_chain(router.https_port, "www.shop.test")
    ok(settings, "certs:remove", "-a", "shop", "--confirm", "shop", "--wait")
    result = s_client(router.https_port, "www.shop.test")
    assert "unrecognized name" in result.stderr and "BEGIN CERTIFICATE" not in result.stdout
    port = router.https_port
    fetch = curl("--resolve", f"www.shop.test:{port}:127.0.0.1", "--cacert", str(ca_file),
                 f"https://www.shop.test:{port}/")  # fmt: skip
    assert fetch.returncode != 0


def test_routers_lists_live_routers_and_wait_says_who_is_behind(
    settings, projector_process, start_router, ca, tmp_path
) -> None:
    first, second = start_router("edge-a"), start_router("edge-b")
    _, reply = shop_with_cert(settings, ca, tmp_path)
    position = reply["position"]
    assert "served by all 2 live router(s)" in ok(settings, "wait", str(position)).stdout
    listing = json.loads(ok(settings, "routers", "--json").stdout)
    live = {r["status"]["router_id"]: r["status"] for r in listing if r["live"]}
    assert set(live) == {"edge-a", "edge-b"}
    assert all(s["position"] >= position and s["hostnames"] == 1 for s in live.values())
    table = ok(settings, "routers").stdout
    assert "=== Routers (2 live)" in table and f"https://127.0.0.1:{first.https_port}" in table

    assert second.stop() == 0  # SIGTERM: it says it is stopping, and is no longer live
    listing = json.loads(ok(settings, "routers", "--json").stdout)
    assert [r["status"]["router_id"] for r in listing if r["live"]] == ["edge-a"]
    waited = run_cli(settings, "wait", str(position + 1000), "--wait-timeout", "1")
    assert waited.returncode == 1
    assert "edge-a at position" in waited.stderr


def test_a_router_stopped_with_sigterm_finishes_requests_in_flight(
    settings, projector_process, start_router, ca, ca_file, tmp_path
) -> None:
    router = start_router()
    shop_with_cert(settings, ca, tmp_path)
    client = tls_client(ca_file, "www.shop.test", router.https_port)
    outcome: dict[str, object] = {}

    def slow_request() -> None:
        client.request("GET", "/slow/1.5")
        response = client.getresponse()
        outcome["status"] = response.status
        outcome["body"] = response.read()

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # the request is at the upstream
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    thread.join(10)
    client.close()
    assert outcome.get("status") == 200 and b"/slow/1.5" in outcome["body"]  # type: ignore[operator]
    assert router.proc.wait(10) == 0
    refused = s_client(router.https_port, "www.shop.test")
    assert "BEGIN CERTIFICATE" not in refused.stdout
