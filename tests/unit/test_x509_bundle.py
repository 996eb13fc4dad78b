"""Certificate bundles: what users upload, normalized or refused with a precise reason."""

from __future__ import annotations

import datetime as dt
import re

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from services.devcerts import DevCA, issue, key_pem, new_key
from services.domain.errors import Rejected
from services.domain.x509_bundle import (
    MAX_BUNDLE_BYTES,
    TrustStore,
    inspect_bundle,
    matching_key,
    pem_blocks,
    pem_roots,
    split_material,
    unusable_keys,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("unit")


@pytest.fixture(scope="module")
def trust(ca: DevCA) -> TrustStore:
    return TrustStore([ca.root.cert])


@pytest.fixture(scope="module")
def leaf(ca: DevCA):
    return ca.leaf("www.example.com", "example.com")


def test_orders_a_shuffled_chain_leaf_first_and_drops_duplicates_and_the_root(
    ca, leaf, trust
) -> None:
    files = [ca.root.cert_pem, ca.intermediate.cert_pem, leaf.cert_pem, ca.intermediate.cert_pem]
    bundle = inspect_bundle(files, leaf.key_pem, now=NOW, trust=trust)
    assert bundle.chain_pem == (leaf.cert_pem + ca.intermediate.cert_pem).decode()
    assert len(bundle.facts.chain_fingerprints) == 2
    assert bundle.facts.trusted and not bundle.facts.self_signed
    untrusted = inspect_bundle(files, leaf.key_pem, now=NOW, trust=TrustStore([]))
    assert untrusted.chain_pem == bundle.chain_pem and not untrusted.facts.trusted
    assert bundle.facts.sans == ["www.example.com", "example.com"]
    assert bundle.facts.key_type == "EC secp256r1" and bundle.facts.key_bits == 256


def test_accepts_crlf_pem_der_and_a_combined_pem(ca, leaf, trust) -> None:
    crlf = leaf.cert_pem.replace(b"\n", b"\r\n")
    der = ca.intermediate.cert.public_bytes(serialization.Encoding.DER)
    a = inspect_bundle([crlf, der], leaf.key_pem.replace(b"\n", b"\r\n"), now=NOW, trust=trust)
    combined = leaf.cert_pem + ca.intermediate.cert_pem + leaf.key_pem
    material = split_material([combined])
    assert len(material.certificates) == 2 and len(material.keys) == 1
    b = inspect_bundle(material.certificates, material.keys[0], now=NOW, trust=trust)
    assert a.facts == b.facts and a.chain_pem == b.chain_pem


def test_accepts_a_der_key_and_normalizes_it_to_pkcs8_pem(leaf, ca, trust) -> None:
    der_key = leaf.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = inspect_bundle(
        [leaf.cert_pem, ca.intermediate.cert_pem], der_key, now=NOW, trust=trust
    )
    assert bundle.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_repr_of_a_bundle_never_shows_the_key(leaf, ca, trust) -> None:
    bundle = inspect_bundle(
        [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem, now=NOW, trust=trust
    )
    assert b"PRIVATE" not in repr(bundle).encode() and "private_key_pem" not in repr(bundle)


def test_self_signed_is_reported_and_not_trusted(trust) -> None:
    cert = issue("self.example.com", sans=["self.example.com"])
    bundle = inspect_bundle([cert.cert_pem], cert.key_pem, now=NOW, trust=trust)
    assert bundle.facts.self_signed and not bundle.facts.trusted


def test_a_chain_to_an_unknown_root_is_untrusted(leaf, ca) -> None:
    bundle = inspect_bundle(
        [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem, now=NOW, trust=TrustStore([])
    )
    assert not bundle.facts.trusted and not bundle.facts.self_signed


def _code(excinfo: pytest.ExceptionInfo[Rejected]) -> str:
    return excinfo.value.code


REFUSALS = [
    # (case, builder -> (cert files, key), expected code, words the message must contain)
    (
        "wrong key",
        lambda ca, leaf: ([leaf.cert_pem], key_pem(new_key())),
        "key_mismatch",
        "does not match",
    ),
    (
        "expired",
        lambda ca, _: _leaf(
            ca, not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)
        ),
        "cert_expired",
        "expired",
    ),
    (
        "not yet valid",
        lambda ca, _: _leaf(ca, not_before=NOW + dt.timedelta(days=1)),
        "cert_not_yet_valid",
        "not valid before",
    ),
    ("1024-bit RSA", lambda ca, _: _leaf(ca, key_kind="rsa1024"), "key_too_weak", "2048"),
    (
        "garbage",
        lambda ca, leaf: ([b"\x00\x01garbage" * 10], leaf.key_pem),
        "unparsable",
        "neither a PEM",
    ),
    (
        "truncated PEM",
        lambda ca, leaf: ([leaf.cert_pem[:200]], leaf.key_pem),
        "unparsable",
        "no complete PEM block",
    ),
    (
        "too large",
        lambda ca, leaf: ([leaf.cert_pem + b"\n" * MAX_BUNDLE_BYTES], leaf.key_pem),
        "bundle_too_large",
        "at most",
    ),
    ("no certificate", lambda ca, leaf: ([], leaf.key_pem), "cert_missing", "No certificate"),
    (
        "passphrase-protected key",
        lambda ca, leaf: (
            [leaf.cert_pem],
            leaf.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        ),
        "key_encrypted",
        "passphrase",
    ),
    (
        "chain that does not link",
        lambda ca, leaf: (
            [leaf.cert_pem, DevCA.create("other").intermediate.cert_pem],
            leaf.key_pem,
        ),
        "chain_broken",
        "does not link",
    ),
]


def _leaf(ca: DevCA, **kwargs):
    cert = ca.leaf("www.example.com", **kwargs)
    return [cert.cert_pem, ca.intermediate.cert_pem], cert.key_pem


@pytest.mark.parametrize(("case", "build", "code", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_problem(case, build, code, words, ca, leaf, trust) -> None:
    files, key = build(ca, leaf)
    with pytest.raises(Rejected) as excinfo:
        inspect_bundle(files, key, now=NOW, trust=trust)
    assert _code(excinfo) == code
    assert words in excinfo.value.message
    assert b"PRIVATE KEY" not in excinfo.value.message.encode()


def test_an_inconsistent_rsa_key_is_refused_without_openssl_validation(ca) -> None:
    good = ca.leaf("rsa.example.com", key_kind="rsa2048")
    n = good.key.private_numbers()
    # Same public half (so it "matches" the certificate) but a corrupted CRT exponent.
    broken = rsa.RSAPrivateNumbers(
        p=n.p,
        q=n.q,
        d=n.d,
        dmp1=n.dmp1 ^ 2,
        dmq1=n.dmq1,
        iqmp=n.iqmp,
        public_numbers=n.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    with pytest.raises(Rejected) as excinfo:
        inspect_bundle(
            [good.cert_pem, ca.intermediate.cert_pem],
            key_pem(broken),
            now=NOW,
            trust=TrustStore([]),
        )
    assert excinfo.value.code == "key_invalid"


def test_a_valid_rsa_2048_bundle_is_accepted(ca) -> None:
    good = ca.leaf("rsa.example.com", key_kind="rsa2048")
    bundle = inspect_bundle(
        [good.cert_pem, ca.intermediate.cert_pem],
        good.key_pem,
        now=NOW,
        trust=TrustStore([ca.root.cert]),
    )
    assert bundle.facts.key_type == "RSA" and bundle.facts.key_bits == 2048 and bundle.facts.trusted


def test_matching_key_finds_the_right_file(leaf) -> None:
    assert matching_key(leaf.cert_pem, [key_pem(new_key()), leaf.key_pem]) == 1
    assert matching_key(leaf.cert_pem, [key_pem(new_key())]) is None


def test_files_that_are_no_usable_key_say_why(leaf) -> None:
    encrypted = new_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    problems = unusable_keys([leaf.key_pem, leaf.cert_pem, b"garbage", encrypted])
    assert {i: e.code for i, e in problems.items()} == {
        1: "not_a_key",
        2: "unparsable",
        3: "key_encrypted",
    }


def test_an_impostor_issuer_with_the_right_names_is_caught_by_its_signature(ca, leaf) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    real = ca.intermediate.cert
    impostor_key = new_key()
    impostor = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(impostor_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .add_extension(
            real.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value, critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(impostor_key, hashes.SHA256())
    )
    pem = impostor.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(Rejected) as excinfo:
        inspect_bundle([leaf.cert_pem, pem], leaf.key_pem, now=NOW, trust=TrustStore([]))
    assert (
        excinfo.value.code == "chain_broken"
        and "signature does not verify" in excinfo.value.message
    )


# The regular expression `pem_blocks` replaced (for speed): the reference it must agree with.
_PEM_REFERENCE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\s*\n(.*?)\n\s*-----END \1-----", re.DOTALL
)
_PIECES = [
    b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----", b"-----BEGIN PRIVATE KEY-----",
    b"-----END PRIVATE KEY-----", b"-----BEGIN EC PARAMETERS-----", b"-----END EC PARAMETERS-----",
    b"-----BEGIN bad label-----", b"-----END bad label-----", b"MIIBszCCAVmgAwIBAgIU", b"QUJD+/==",
    b"Proc-Type: 4,ENCRYPTED", b"\n", b"\n", b"\n", b" ", b"\t", b"-----", b"-----BEGIN ", b"x",
]  # fmt: skip


@settings(max_examples=2000, deadline=None)  # 100 examples missed a deliberately broken rule
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_pem_blocks_finds_what_the_regular_expression_found(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    expected = [
        (m.group(1), b"".join(m.group(2).split()), m.group(0), b"ENCRYPTED" in m.group(2))
        for m in _PEM_REFERENCE.finditer(data)
    ]
    found = [
        (label, b"".join(body.split()), whole, b"ENCRYPTED" in body)
        for label, body, whole in pem_blocks(data)
    ]
    assert found == expected


def test_pem_blocks_reads_real_files_with_crlf_and_text_around_them(ca, leaf) -> None:
    data = b"subject=...\n" + leaf.cert_pem + b"\r\n" + ca.intermediate.cert_pem + leaf.key_pem
    blocks = pem_blocks(data.replace(b"\r\n", b"\n"))
    assert [label for label, _, _ in blocks] == [b"CERTIFICATE", b"CERTIFICATE", b"PRIVATE KEY"]
    assert blocks[2][2] + b"\n" == leaf.key_pem


def test_pem_roots_loads_each_certificate_and_names_the_ones_that_do_not_parse(ca) -> None:
    good = ca.root.cert_pem + ca.intermediate.cert_pem.replace(b"\n", b"\r\n")
    broken = ca.root.cert_pem.replace(b"MII", b"MIX", 1)
    roots, bad = pem_roots(b"# a comment\n" + good + broken + b"trailing text\n")
    assert roots == [ca.root.cert, ca.intermediate.cert] and bad == [3]
    assert pem_roots(b"no certificates here") == ([], [])


def test_the_system_store_loads_without_warnings(recwarn: pytest.WarningsRecorder) -> None:
    import ssl
    from pathlib import Path

    store = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not store.is_file():
        pytest.skip(f"no system trust store at {store}")
    roots, _ = pem_roots(store.read_bytes())
    assert len(roots) > 50 and not recwarn.list


def test_an_untrusted_certificate_says_what_to_check(ca, leaf, trust) -> None:
    from services.cli.output import certificate_details

    alone = inspect_bundle([leaf.cert_pem], leaf.key_pem, now=NOW, trust=trust).facts
    assert not alone.trusted
    assert "no intermediate certificates" in certificate_details(alone)
    chained = [leaf.cert_pem, ca.intermediate.cert_pem]
    foreign = inspect_bundle(chained, leaf.key_pem, now=NOW, trust=TrustStore([])).facts
    assert "does not reach a root this platform trusts" in certificate_details(foreign)
    trusted = inspect_bundle(chained, leaf.key_pem, now=NOW, trust=trust).facts
    assert "verified by a root authority" in certificate_details(trusted)
    assert "intermediate" not in certificate_details(trusted).split("Fingerprint")[1]
    no_names = msgspec.structs.replace(foreign, sans=[])
    assert "names no DNS names (no subjectAltName)" in certificate_details(no_names)
