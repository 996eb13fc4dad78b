"""The `certplane` command as a user runs it, against a gateway running as its own process."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.devcerts import DevCA, key_pem, new_key
from tests.conftest import run_cli


def ok(settings, *args: str):
    result = run_cli(settings, *args)
    assert result.returncode == 0, result.stderr
    return result


def test_a_whole_session_reads_like_heroku(settings, projector_process, files) -> None:
    assert "Creating shop... done" in ok(settings, "apps:create", "shop").stdout
    added_domain = ok(settings, "domains:add", "www.example.com", "-a", "shop")
    assert "Adding www.example.com to shop... done" in added_domain.stdout
    assert "Configure your app's DNS provider to point to the DNS Target" in added_domain.stderr
    target = added_domain.stderr.splitlines()[1].split()[-1]
    assert target.endswith("." + settings.dns_zone)
    added = ok(
        settings,
        "certs:add",
        str(files["chain"]),
        str(files["crt"]),
        str(files["key"]),
        "-a",
        "shop",
    ).stdout
    assert "Adding SSL to shop... done" in added
    assert f"shop now served by {target} (www.example.com)" in added
    assert "Common Name(s): www.example.com, *.example.com" in added
    assert "SSL certificate is verified by a root authority." in added

    table = ok(settings, "certs", "-a", "shop").stdout.splitlines()
    assert table[0].split() == [
        "Name",
        "Common",
        "Name(s)",
        "Expires",
        "Trusted",
        "Type",
        "Domains",
    ]
    assert "True" in table[2] and "SNI" in table[2] and table[2].rstrip().endswith("1")
    [endpoint] = json.loads(ok(settings, "certs", "-a", "shop", "--json").stdout)
    assert endpoint["domains"] == ["www.example.com"] and endpoint["endpoint_type"] == "sni"
    info = ok(settings, "certs:info", "-a", "shop").stdout
    assert f"Fetching SSL certificate {endpoint['name']} info for shop... done" in info
    domains = ok(settings, "domains", "-a", "shop").stdout
    assert "www.example.com" in domains and endpoint["name"] in domains and target in domains
    info = ok(settings, "domains:info", "www.example.com", "-a", "shop").stdout
    assert f"DNS Target:      {target}" in info
    log = ok(settings, "audit:log", "-a", "shop").stdout
    assert "certificate added" in log and "domain added" in log
    short = [line for line in log.splitlines() if "domain added" in line]
    assert short and all(len(line) < 120 for line in short), "padded to the longest summary"

    refused = run_cli(settings, "certs:update", str(files["crt"]), str(files["key"]), "-a", "shop")
    assert refused.returncode == 1 and "--confirm shop" in refused.stderr
    ok(
        settings,
        "certs:update",
        str(files["crt"]),
        str(files["chain"]),
        str(files["key"]),
        "-a",
        "shop",
        "--confirm",
        "shop",
    )
    removed = ok(settings, "certs:remove", "-a", "shop", "--confirm", "shop").stdout
    assert "Removing SSL certificate" in removed
    assert "shop has no SSL certificates" in ok(settings, "certs", "-a", "shop").stdout
    ok(settings, "domains:remove", "www.example.com", "-a", "shop")
    assert "shop" in ok(settings, "apps").stdout
    ok(settings, "apps:destroy", "shop", "--confirm", "shop")
    assert json.loads(ok(settings, "apps", "--json").stdout) == []


def test_refusals_exit_1_and_say_what_to_do(
    settings, gateway_process, files, tmp_path: Path
) -> None:
    ok(settings, "apps:create", "shop")
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(key_pem(new_key()))
    result = run_cli(settings, "certs:add", str(files["crt"]), str(wrong_key), "-a", "shop")
    assert result.returncode == 1
    assert "does not match" in result.stderr and "key_mismatch" in result.stderr

    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"A" * 10_000_000)
    result = run_cli(settings, "certs:add", str(huge), str(files["key"]), "-a", "shop")
    assert result.returncode == 1 and "bundle_too_large" in result.stderr
    assert f"{huge} is larger than 256 KiB" in result.stderr
    # a device passed by mistake is refused, not read until memory runs out
    result = run_cli(settings, "certs:add", "/dev/zero", str(files["key"]), "-a", "shop")
    assert result.returncode == 1 and "/dev/zero is larger than 256 KiB" in result.stderr
    result = run_cli(settings, "certs:chain", str(files["crt"]), "/dev/urandom")
    assert result.returncode == 1 and "bundle_too_large" in result.stderr

    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"garbage\n")
    result = run_cli(settings, "certs:add", str(garbage), str(files["key"]), "-a", "shop")
    assert result.returncode == 1 and "unparsable" in result.stderr
    assert f"{garbage} is neither a PEM file" in result.stderr  # which file, by its name

    result = run_cli(settings, "domains:add", "not a hostname", "-a", "shop")
    assert result.returncode == 1 and "invalid_hostname" in result.stderr

    result = run_cli(settings, "domains:add", "www.example.com", "-a", "nope")
    assert result.returncode == 1 and "apps:create nope" in result.stderr

    # App names become NATS subject tokens: a space or a wildcard must be refused as a name,
    # not end in a traceback from the NATS client.
    for bad in ("Bad Name", "shop.>", "*"):
        for args in (("apps:create", bad), ("domains", "-a", bad)):
            result = run_cli(settings, *args)
            assert result.returncode == 1, (args, result.stderr)
            assert "invalid_app_name" in result.stderr and repr(bad) in result.stderr
            assert "Traceback" not in result.stderr


def test_der_crlf_and_unicode_input(settings, projector_process, ca: DevCA, tmp_path: Path) -> None:
    ok(settings, "apps:create", "shop")
    ok(settings, "domains:add", "bücher.example.com", "-a", "shop")
    leaf = ca.leaf("xn--bcher-kva.example.com")
    crt = tmp_path / "server.der"
    crt.write_bytes(leaf.cert.public_bytes(serialization.Encoding.DER))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(ca.intermediate.cert_pem.replace(b"\n", b"\r\n"))
    key = tmp_path / "server.key"
    key.write_bytes(leaf.key_pem.replace(b"\n", b"\r\n"))
    out = ok(settings, "certs:add", str(crt), str(chain), str(key), "-a", "shop").stdout
    assert "serves xn--bcher-kva.example.com" in out and "shop now served by" in out


def test_apps_create_without_a_name_makes_one_up(settings, projector_process) -> None:
    first = ok(settings, "apps:create", "--json")
    name = json.loads(first.stdout)["events"][0]["app"]
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d{5}", name), name
    second = ok(settings, "apps:create").stdout
    assert re.fullmatch(r"Creating [a-z]+-[a-z]+-\d{5}\.\.\. done\n", second), second
    listed = json.loads(ok(settings, "apps", "--json").stdout)
    assert name in {a["name"] for a in listed} and len(listed) == 2


def test_reads_without_projectors_say_to_start_them(settings, gateway_process) -> None:
    result = run_cli(settings, "apps")
    assert result.returncode == 1 and "start the projectors" in result.stderr
    assert "The certificates read model does not exist yet" in result.stderr
    assert "`certplane projector certificates`" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(settings, gateway_process) -> None:
    result = run_cli(settings, "certs:add")
    assert result.returncode == 2 and "FILE" in result.stderr
    result = run_cli(settings, "certs")
    assert result.returncode == 2 and "No app specified" in result.stderr
    assert "usage: certplane certs " in result.stderr  # the command's usage, not the top's
    result = run_cli(settings, "wait", "-5")
    assert result.returncode == 2 and "not a log position" in result.stderr
    result = run_cli(settings, "certs:frobnicate")
    assert result.returncode == 2
    for command in (
        ("projections:rebuild", "no such"),
        ("projections:skip", "x", "5", "--reason", "r"),
    ):
        result = run_cli(settings, *command)
        assert result.returncode == 2 and "choose from 'certificates'" in result.stderr


def test_unreachable_control_plane_exits_3_naming_the_url(settings) -> None:
    result = run_cli(settings, "apps", CERTPLANE_NATS_URL="nats://127.0.0.1:1")
    assert result.returncode == 3 and "nats://127.0.0.1:1" in result.stderr
    result = run_cli(settings, "apps", CERTPLANE_NATS_URL="nats://s3cr3t-token@127.0.0.1:1")
    assert result.returncode == 3 and "nats://***@127.0.0.1:1" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout
    result = run_cli(settings, "apps", CERTPLANE_PREFIX="nobody-listens-here")
    assert result.returncode == 3 and "no certplane gateway is answering" in result.stderr
    assert result.stderr.count(settings.nats_url) == 1  # named once, not twice


def test_a_certificate_added_twice_warns_after_the_progress_line(
    settings, projector_process, files
) -> None:
    ok(settings, "apps:create", "shop")
    ok(settings, "domains:add", "www.example.com", "-a", "shop")
    add = ("certs:add", str(files["chain"]), str(files["crt"]), str(files["key"]), "-a", "shop")
    first = json.loads(ok(settings, *add, "--json").stdout)["events"][-1]["endpoint"]
    again = ok(settings, *add)
    assert again.stdout.startswith("Adding SSL to shop... done\n")
    assert f"shop already has this certificate as {first}" in again.stderr
    listed = [e["name"] for e in json.loads(ok(settings, "certs", "-a", "shop", "--json").stdout)]
    assert len(listed) == 2 and listed == sorted(listed)  # by name, not by last change
    (second,) = set(listed) - {first}
    removed = ok(settings, "certs:remove", "--name", second, "--confirm", "shop", "-a", "shop")
    assert f"www.example.com is now served by {first}" in removed.stdout
    info = ok(settings, "domains:info", "www.example.com", "-a", "shop").stdout
    assert f"SNI Endpoint:    {first}" in info


def test_local_helpers_order_a_chain_and_find_the_key(
    settings, files, ca: DevCA, tmp_path: Path
) -> None:
    result = run_cli(
        settings, "certs:chain", str(files["ca"]), str(files["crt"]), str(files["chain"])
    )
    assert result.returncode == 0
    chain = x509.load_pem_x509_certificates(result.stdout.encode())
    subjects = [c.subject.rfc4514_string() for c in chain]
    assert subjects[0].endswith("CN=www.example.com") or "www.example.com" in subjects[0]
    assert "intermediate" in subjects[1] and "root" in subjects[2]
    other = tmp_path / "other.key"
    other.write_bytes(key_pem(new_key()))
    result = run_cli(settings, "certs:key", str(files["crt"]), str(other), str(files["key"]))
    assert result.returncode == 0 and result.stdout.strip() == str(files["key"])
    result = run_cli(settings, "certs:key", str(files["crt"]), str(other))
    assert result.returncode == 1
    assert f"None of {other} matches" in result.stderr
    # a certificate passed as a key file is named as such, on a marked line of its own
    result = run_cli(settings, "certs:key", str(files["crt"]), str(other), str(files["chain"]))
    assert result.returncode == 1
    assert f" ▸    {files['chain']}: This file holds a certificate, not a private key" in (
        result.stderr
    )

    files_in_any_order = (str(files["chain"]), str(files["ca"]), str(files["crt"]))
    listed = json.loads(ok(settings, "certs:chain", *files_in_any_order, "--json").stdout)
    assert listed[0]["subject"].endswith("CN=www.example.com")
    assert [e["pem"] for e in listed] == [
        c.public_bytes(serialization.Encoding.PEM).decode() for c in chain
    ]
    assert (
        listed[0]["issuer"] == listed[1]["subject"] and len(listed[0]["fingerprint_sha256"]) == 64
    )
    found = json.loads(
        ok(settings, "certs:key", str(files["crt"]), str(other), str(files["key"]), "--json").stdout
    )
    assert found == {"certificate": str(files["crt"]), "key": str(files["key"])}


def test_a_legacy_ssl_endpoint_lists_the_domains_it_serves(
    settings, projector_process, files
) -> None:
    """A legacy SSL Endpoint serves every domain no SNI endpoint claims (as routers do); the
    views said it served none."""
    ok(settings, "apps:create", "shop")
    ok(settings, "domains:add", "www.example.com", "-a", "shop")
    cert = (str(files["crt"]), str(files["chain"]), str(files["key"]), "-a", "shop")
    added = ok(settings, "certs:add", *cert, "--type", "endpoint").stdout
    assert "serves www.example.com" in added
    ok(settings, "domains:add", "api.example.com", "-a", "shop")
    (legacy,) = json.loads(ok(settings, "certs", "-a", "shop", "--json").stdout)
    assert legacy["domains"] == ["api.example.com", "www.example.com"]
    info = ok(settings, "domains:info", "api.example.com", "-a", "shop").stdout
    assert f"SSL Endpoint:    {legacy['name']} (legacy" in info

    ok(settings, "certs:add", *cert, "--domains", "www.example.com")  # the migration begins
    by_type = {
        e["endpoint_type"]: e
        for e in json.loads(ok(settings, "certs", "-a", "shop", "--json").stdout)
    }
    assert by_type["sni"]["domains"] == ["www.example.com"]
    assert by_type["endpoint"]["domains"] == ["api.example.com"]
    ok(
        settings,
        "certs:remove",
        "--name",
        by_type["sni"]["name"],
        "--confirm",
        "shop",
        "-a",
        "shop",
    )
    (legacy,) = json.loads(ok(settings, "certs", "-a", "shop", "--json").stdout)
    assert legacy["domains"] == ["api.example.com", "www.example.com"]


def test_domains_update_moves_a_domain_to_the_certificate_named(
    settings, projector_process, ca: DevCA, tmp_path: Path
) -> None:
    ok(settings, "apps:create", "shop")
    ok(settings, "domains:add", "www.example.com", "-a", "shop")
    endpoints = []
    for stem, leaf in (("wild", ca.leaf("*.example.com")), ("www", ca.leaf("www.example.com"))):
        paths = ca.write(tmp_path, leaf, stem=stem)
        added = ok(
            settings, "certs:add", str(paths["chain"]), str(paths["crt"]), str(paths["key"]),
            "-a", "shop", "--json",
        )  # fmt: skip
        endpoints.append(json.loads(added.stdout)["events"][-1]["endpoint"])
    wild, www = endpoints
    info = ok(settings, "domains:info", "www.example.com", "-a", "shop").stdout
    assert f"SNI Endpoint:    {www}" in info  # the newest certificate that covers it
    moved = ok(settings, "domains:update", "www.example.com", "--cert", wild, "-a", "shop")
    assert f"Updating www.example.com to use {wild} certificate... done" in moved.stdout
    info = ok(settings, "domains:info", "www.example.com", "-a", "shop").stdout
    assert f"SNI Endpoint:    {wild}" in info
    again = run_cli(settings, "domains:update", "www.example.com", "--cert", wild, "-a", "shop")
    assert again.returncode == 1 and "domain_unchanged" in again.stderr
    missing = run_cli(settings, "domains:update", "www.example.com", "-a", "shop")
    assert missing.returncode == 2 and "--cert" in missing.stderr
    log = ok(settings, "audit:log", "-a", "shop").stdout
    assert f"domain now served by {wild}" in log
