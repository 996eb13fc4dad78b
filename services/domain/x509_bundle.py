"""Certificate bundles: from the files a user passes to a normalized chain and its facts.

Pure: bytes in, a `Bundle` or a `Rejected` out. Accepts PEM (LF or CRLF), DER, a `.pem` with
certificate and key together, intermediates in any order; produces the leaf first, then the
intermediates in issuing order, duplicates removed. `Bundle.private_key_pem` is the only
clear key material certplane ever holds, in memory only, and is kept out of `repr`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from events.endpoint import CertificateFacts
from services.domain.errors import ChainIncomplete, KeyMismatch, Rejected

MAX_BUNDLE_BYTES = 256 * 1024
MIN_RSA_BITS = 2048
ALLOWED_CURVES = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}

_PEM_BEGIN = b"-----BEGIN "
_PEM_LABEL = re.compile(rb"[A-Z0-9 ]+")
_PEM_SPACE = re.compile(rb"\s*")
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
_ENCRYPTED_KEY_LABELS = {b"ENCRYPTED PRIVATE KEY"}
_CERT_LABELS = {b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"}
_SHA256 = hashes.SHA256()
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class Material:
    """What a set of files holds: certificates (DER each) and private keys (PEM or DER)."""

    certificates: list[bytes]
    keys: list[bytes] = field(repr=False)


@dataclass(frozen=True)
class Bundle:
    """A validated chain and its key; `private_key_pem` is PKCS#8 PEM, never printed."""

    facts: CertificateFacts
    chain_pem: str
    private_key_pem: bytes = field(repr=False)


class TrustStore:
    """Roots a chain may reach to count as trusted: the system store plus the operator's extra."""

    def __init__(self, roots: list[x509.Certificate]) -> None:
        self.roots = roots
        self._store = Store(roots) if roots else None

    @classmethod
    def from_der(cls, roots: list[bytes]) -> TrustStore:
        """Roots as DER (as a gateway hands them to its bundle workers)."""
        with warnings.catch_warnings():  # some system roots predate RFC 5280's rules
            warnings.simplefilter("ignore")
            return cls([x509.load_der_x509_certificate(r) for r in roots])

    def reaches_root(
        self, chain: list[x509.Certificate], name: str | None, now: dt.datetime
    ) -> bool:
        """Full RFC 5280 path validation for `name` (or the chain's first SAN) at `now`."""
        if self._store is None or name is None:
            return False
        verifier = PolicyBuilder().store(self._store).time(now).build_server_verifier(DNSName(name))
        try:
            verifier.verify(chain[0], chain[1:])
        except VerificationError:
            return False
        return True


def pem_roots(pem: bytes) -> tuple[list[x509.Certificate], list[int]]:
    """The certificates of a PEM bundle, one block at a time, and the (1-based) numbers of
    the blocks that do not parse.

    Block by block, so that one root the library will not load (the system store has roots
    older than RFC 5280's rules, which cryptography warns about now and will refuse later)
    costs that root, not the whole store.
    """
    roots: list[x509.Certificate] = []
    bad: list[int] = []
    certificates = [whole for label, _, whole in pem_blocks(pem) if label == b"CERTIFICATE"]
    for number, block in enumerate(certificates, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                bad.append(number)
    return roots, bad


def split_material(files: list[bytes], names: list[str] | None = None) -> Material:
    """Sort files' contents into certificates and keys; raises `Rejected` on anything else.

    `names` are what the user called the files (the CLI has them; the gateway only counts)."""
    total = sum(len(f) for f in files)
    if total > MAX_BUNDLE_BYTES:
        raise Rejected(
            "bundle_too_large",
            f"The files add up to {total} bytes; a certificate bundle may be at most "
            f"{MAX_BUNDLE_BYTES // 1024} KiB. Pass only the certificate, its intermediates and the key.",
            size=str(total),
        )
    certificates: list[bytes] = []
    keys: list[bytes] = []
    for index, data in enumerate(files, start=1):
        name = names[index - 1] if names else f"File {index}"
        if b"-----BEGIN" in data:
            _split_pem(data.replace(b"\r\n", b"\n"), index, name, certificates, keys)
        else:
            _split_der(data, index, name, certificates, keys)
    return Material(certificates, keys)


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(label, body, whole block) of every complete PEM block in `data`, in order.

    Exactly what `-----BEGIN (L)-----\\s*\\n(.*?)\\n\\s*-----END \\1-----` (DOTALL) finds,
    backtracking included, but with `bytes.find`: that regular expression's lazy scan cost
    ~20 ns a byte, two thirds of reading a bundle's files (71 of 105 µs for a certificate, an
    intermediate and an RSA key). The tests hold the expression as the reference.
    """
    blocks = []
    start = data.find(_PEM_BEGIN)
    while start >= 0:
        found = _pem_block_at(data, start)
        if found is None:
            start = data.find(_PEM_BEGIN, start + 1)
            continue
        blocks.append(found)
        start = data.find(_PEM_BEGIN, start + len(found[2]))
    return blocks


def _pem_block_at(data: bytes, start: int) -> tuple[bytes, bytes, bytes] | None:
    label_end = data.find(b"-----", start + len(_PEM_BEGIN))
    label = data[start + len(_PEM_BEGIN) : label_end]
    if label_end < 0 or not _PEM_LABEL.fullmatch(label):
        return None
    marker = b"-----END " + label + b"-----"
    after_header = label_end + 5
    gap_end = _PEM_SPACE.match(data, after_header).end()  # type: ignore[union-attr]
    gap = data[after_header:gap_end]
    if b"\n" not in gap:
        return None
    # `\s*` is greedy: the body starts after the gap's last newline, and only if no END
    # line follows from there does it give back a newline (an empty body, END right after).
    body_start = after_header + gap.rindex(b"\n") + 1
    end = data.find(marker, body_start)
    while end >= 0:  # the lazy `.*?`: the first END marker that starts a line of its own
        line_start = body_start + len(data[body_start:end].rstrip())
        newline = data.find(b"\n", max(line_start, body_start), end)
        if newline >= 0:
            return label, data[body_start:newline], data[start : end + len(marker)]
        end = data.find(marker, end + 1)
    if gap.count(b"\n") >= 2 and data.startswith(marker, gap_end):
        body_start = after_header + gap.rindex(b"\n", 0, gap.rindex(b"\n")) + 1
        newline = after_header + gap.rindex(b"\n")
        return label, data[body_start:newline], data[start : gap_end + len(marker)]
    return None


def _split_pem(
    data: bytes, index: int, name: str, certificates: list[bytes], keys: list[bytes]
) -> None:
    blocks = pem_blocks(data)
    if not blocks:
        raise Rejected(
            "unparsable",
            f"{name} has a PEM header but no complete PEM block: check that it was not "
            "truncated and that every BEGIN line has its END line.",
            file=str(index),
        )
    for label, body, whole in blocks:
        if label in _ENCRYPTED_KEY_LABELS or (label in _KEY_LABELS and b"ENCRYPTED" in body):
            raise Rejected(
                "key_encrypted",
                "The private key is protected by a passphrase. Remove it first, e.g. "
                "`openssl pkey -in server.key -out server.unencrypted.key`, and pass that file.",
                file=str(index),
            )
        if label in _KEY_LABELS:
            keys.append(whole + b"\n")
        elif label in _CERT_LABELS:
            try:
                der = base64.b64decode(b"".join(body.split()), validate=True)
                x509.load_der_x509_certificate(der)
            except ValueError as e:
                raise Rejected(
                    "unparsable",
                    f"{name} contains a CERTIFICATE block that is not a valid X.509 "
                    "certificate: check that the file was copied completely.",
                    file=str(index),
                ) from e
            certificates.append(der)
        # Other blocks (parameters, CSRs) carry nothing a router needs: ignore them.


def _split_der(
    data: bytes, index: int, name: str, certificates: list[bytes], keys: list[bytes]
) -> None:
    try:
        x509.load_der_x509_certificate(data)
        certificates.append(data)
        return
    except ValueError:
        pass
    try:
        serialization.load_der_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
        keys.append(data)
        return
    except TypeError as e:
        raise Rejected(
            "key_encrypted",
            "The private key is protected by a passphrase. Remove it first, e.g. "
            "`openssl pkey -in server.key -out server.unencrypted.key`, and pass that file.",
            file=str(index),
        ) from e
    except (ValueError, UnsupportedAlgorithm):
        pass
    raise Rejected(
        "unparsable",
        f"{name} is neither a PEM file nor a DER certificate or key: pass the "
        "certificate, intermediates and private key as PEM (-----BEGIN ...) or DER files.",
        file=str(index),
    )


def load_private_key(data: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Parse one PEM or DER key; RSA consistency is checked by `_check_rsa`, not OpenSSL."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(
                data.replace(b"\r\n", b"\n"), password=None, unsafe_skip_rsa_key_validation=True
            )
        else:
            key = serialization.load_der_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=True
            )
    except TypeError as e:
        raise Rejected(
            "key_encrypted",
            "The private key is protected by a passphrase. Remove it first, e.g. "
            "`openssl pkey -in server.key -out server.unencrypted.key`, and pass that file.",
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise Rejected(
            "unparsable",
            "The private key could not be parsed: pass an unencrypted RSA or EC key in PEM or DER.",
        ) from e
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa(key)
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise Rejected(
                "key_unsupported",
                f"EC keys on curve {key.curve.name} are not supported: use P-256 or P-384.",
            )
        return key
    kind = (
        "Ed25519/Ed448"
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else type(key).__name__
    )
    raise Rejected(
        "key_unsupported",
        f"{kind} keys are not supported by browsers for TLS server certificates: use RSA "
        "(2048 bits or more) or EC P-256/P-384.",
    )


def _check_rsa(key: rsa.RSAPrivateKey) -> None:
    """Cheap consistency check replacing OpenSSL's RSA key validation (≈45 ms per key).

    Why it is as sound for us: OpenSSL's check mostly proves p and q prime. We instead require
    p·q == n and the CRT exponents to be consistent with d, and later that n and e equal the
    leaf certificate's. The leaf's n was generated by its owner as a product of two primes,
    so by unique factorization any p, q with p·q == n (both > 1) are exactly those primes;
    with e·d ≡ 1 mod lcm(p-1, q-1) the key then signs correctly for that certificate.
    """
    numbers = key.private_numbers()
    pub = numbers.public_numbers
    p, q, d = numbers.p, numbers.q, numbers.d
    lam = math.lcm(p - 1, q - 1)
    consistent = (
        p > 1
        and q > 1
        and p * q == pub.n
        and (pub.e * d) % lam == 1
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
    )
    if not consistent:
        raise Rejected(
            "key_invalid",
            "The RSA private key is internally inconsistent (its factors do not match its "
            "modulus): it is corrupted. Export the key again from where it was generated.",
        )


def _public_id(key: object) -> tuple[object, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        n = key.public_numbers()
        return ("rsa", n.n, n.e)
    if isinstance(key, ec.EllipticCurvePublicKey):
        n2 = key.public_numbers()
        return ("ec", key.curve.name, n2.x, n2.y)
    return ("other", id(key))


class _Parsed:
    """A certificate whose names, key ids and fingerprint are read at most once.

    `cryptography` builds a fresh `Name` on every `.subject`/`.issuer` access and re-encodes
    for every fingerprint; building a chain and its facts asks for each several times.
    """

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        self.fingerprint: bytes = cert.fingerprint(_SHA256)

    @functools.cached_property
    def public_key(self) -> object:
        return self.cert.public_key()

    @functools.cached_property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @functools.cached_property
    def subject(self) -> x509.Name:
        return self.cert.subject

    @functools.cached_property
    def issuer(self) -> x509.Name:
        return self.cert.issuer

    @functools.cached_property
    def self_issued(self) -> bool:
        return self.issuer == self.subject

    @functools.cached_property
    def authority_key_id(self) -> bytes | None:
        aki = _extension(self.cert, x509.AuthorityKeyIdentifier)
        return aki.key_identifier if aki is not None else None

    @functools.cached_property
    def subject_key_id(self) -> bytes | None:
        ski = _extension(self.cert, x509.SubjectKeyIdentifier)
        return ski.digest if ski is not None else None


_PARSED: dict[bytes, _Parsed] = {}
_PARSED_MAX = 256


def _parsed(der: bytes) -> _Parsed:
    """A certificate read from DER, remembered: uploads repeat the same few intermediates,
    whose names, key ids and fingerprint are then read once (facts of the bytes alone)."""
    found = _PARSED.get(der)
    if found is None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        found = _PARSED[der] = _Parsed(x509.load_der_x509_certificate(der))
    return found


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def one_line_name(name: x509.Name) -> str:
    """OpenSSL's one-line form, as Heroku prints it: /C=US/O=Example/CN=www.example.com."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            parts.append(f"{attr.rfc4514_attribute_name}={value}")
    return "/" + "/".join(parts) if parts else ""


def _common_name(subject: x509.Name) -> str:
    names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def _sans(cert: x509.Certificate) -> list[str]:
    san = _extension(cert, x509.SubjectAlternativeName)
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)] if san is not None else []


def _issued_by(child: _Parsed, parent: _Parsed) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_link(child: _Parsed, parent: _Parsed) -> bool:
    """Whether `parent` names itself as `child`'s issuer (subject, and key ids where present)."""
    if child.issuer != parent.subject:
        return False
    if child.authority_key_id is None or parent.subject_key_id is None:
        return True
    return child.authority_key_id == parent.subject_key_id


def order_chain(
    certificates: list[x509.Certificate],
    leaf: x509.Certificate | None = None,
    *,
    verify_signatures: bool = True,
) -> list[x509.Certificate]:
    """Leaf first, then each issuer; raises `ChainIncomplete` if a certificate does not link.

    With `verify_signatures=False` links are found by name and key id only; the caller must
    then check the signatures (the trust verifier does, for a trusted chain).
    """
    parsed = [_Parsed(c) for c in certificates]
    first = _Parsed(leaf) if leaf is not None else None
    return [p.cert for p in _order(parsed, first, verify_signatures=verify_signatures)]


def _order(
    certificates: list[_Parsed],
    leaf: _Parsed | None = None,
    *,
    verify_signatures: bool = True,
) -> list[_Parsed]:
    links = _issued_by if verify_signatures else _names_link
    unique: dict[bytes, _Parsed] = {}
    for parsed in certificates:
        unique.setdefault(parsed.fingerprint, parsed)
    pool = list(unique.values())
    if leaf is None:
        issuers = {id(p) for c in pool for p in pool if c is not p and links(c, p)}
        leaves = [c for c in pool if id(c) not in issuers]
        first = leaves[0] if leaves else pool[0]
    else:
        first = unique[leaf.fingerprint]
    chain = [first]
    rest = [c for c in pool if c is not first]
    while rest:
        current = chain[-1]
        if current.self_issued:
            break
        parent = next((c for c in rest if links(current, c)), None)
        if parent is None:
            break
        chain.append(parent)
        rest.remove(parent)
    if rest:
        stray = rest[0]
        raise ChainIncomplete(
            f"The certificate {one_line_name(stray.subject)!r} does not link to the chain of "
            f"{one_line_name(first.subject)!r}: pass only the leaf and the intermediates that issued it "
            "(check with `certplane certs:chain FILES...`).",
            subject=one_line_name(stray.subject),
        )
    return chain


def inspect_bundle(
    certificate_files: list[bytes], key_file: bytes, *, now: dt.datetime, trust: TrustStore
) -> Bundle:
    """Validate a bundle and return its normalized chain and facts, or raise `Rejected`."""
    material = split_material([*certificate_files, key_file])
    if not material.certificates:
        raise Rejected(
            "cert_missing",
            "No certificate was found in the files: pass the server certificate (and its "
            "intermediates) as PEM or DER.",
        )
    if len(material.keys) != 1:
        raise Rejected(
            "key_missing" if not material.keys else "key_ambiguous",
            "Pass exactly one private key (the one matching the server certificate); "
            f"found {len(material.keys)}.",
        )
    key = load_private_key(material.keys[0])
    certs = [_parsed(der) for der in material.certificates]
    public = key.public_key()  # compared by value (EVP_PKEY_eq), cheaper than its numbers
    leaf = next((c for c in certs if c.public_key == public), None)
    if leaf is None:
        raise KeyMismatch(
            "The private key does not match the certificate: find the key that was generated "
            "with this certificate's request (check with `certplane certs:key CRT KEYS...`).",
        )
    chain = _order(certs, leaf, verify_signatures=False)
    if len(chain) > 1 and chain[-1].self_issued and _issued_by(chain[-1], chain[-1]):
        # A root is left out of what routers send: a client trusts a root it already has,
        # never one a server hands it (RFC 8446 4.4.2 lets servers omit it), so it would only
        # add a kilobyte or two to every handshake. Trust is decided against the roots of the
        # trust store, with or without it.
        chain = chain[:-1]
    _check_validity(leaf.cert, now)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise Rejected(
            "key_too_weak",
            f"The RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required. "
            "Issue a new certificate with a 2048-bit (or larger) RSA or an EC P-256 key.",
            bits=str(key.key_size),
        )
    facts = _facts(chain, key, now, trust)
    if not facts.trusted:  # the trust verifier checked a trusted chain's signatures already
        _check_signatures(chain)
    return Bundle(
        facts=facts,
        chain_pem="".join(p.pem for p in chain),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _check_signatures(chain: list[_Parsed]) -> None:
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            raise ChainIncomplete(
                f"The certificate {one_line_name(child.subject)!r} names {one_line_name(parent.subject)!r} as its "
                "issuer, but its signature does not verify with that certificate's key: one of "
                "them is not the one the authority sent. Download the chain again.",
                subject=one_line_name(child.subject),
            )


def _check_validity(leaf: x509.Certificate, now: dt.datetime) -> None:
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        raise Rejected(
            "cert_expired",
            f"The certificate expired at {not_after:%Y-%m-%d %H:%M} UTC: renew it with your "
            "certificate authority and upload the new one.",
            not_after=not_after.isoformat(),
        )
    if not_before > now:
        raise Rejected(
            "cert_not_yet_valid",
            f"The certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC: wait until "
            "then, or check the clock of the machine that issued it.",
            not_before=not_before.isoformat(),
        )


def _facts(
    chain: list[_Parsed],
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    trust: TrustStore,
) -> CertificateFacts:
    parsed = chain[0]
    leaf = parsed.cert
    sans = _sans(leaf)
    self_signed = parsed.self_issued and _issued_by(parsed, parsed)
    name = next((s for s in sans if not s.startswith("*.")), None)
    if name is None and sans:
        name = "x" + sans[0][1:]  # a wildcard SAN is checked through one name it covers
    return CertificateFacts(
        subject=one_line_name(parsed.subject),
        issuer=one_line_name(parsed.issuer),
        common_name=_common_name(parsed.subject),
        sans=sans,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=parsed.fingerprint.hex(),
        serial=format(leaf.serial_number, "x"),
        key_type="RSA" if isinstance(key, rsa.RSAPrivateKey) else f"EC {key.curve.name}",
        key_bits=key.key_size,
        trusted=not self_signed and trust.reaches_root([p.cert for p in chain], name, now),
        self_signed=self_signed,
        chain_fingerprints=[p.fingerprint.hex() for p in chain],
    )


def matching_key(certificate: bytes, keys: list[bytes]) -> int | None:
    """Index of the key (among `keys`) whose public half matches the certificate's, if any."""
    material = split_material([certificate])
    if not material.certificates:
        raise Rejected("cert_missing", "No certificate was found in the first file.")
    target = _public_id(x509.load_der_x509_certificate(material.certificates[0]).public_key())
    for index, data in enumerate(keys):
        try:
            if _public_id(load_private_key(data).public_key()) == target:
                return index
        except Rejected:
            continue
    return None


def unusable_keys(keys: list[bytes]) -> dict[int, Rejected]:
    """Why each of `keys` that is no usable private key is not (by index): what to say when
    none matched, so that a certificate or a passphrase-protected key passed as a key file
    is named as such rather than as a key that does not match."""
    problems = {}
    for index, data in enumerate(keys):
        try:
            load_private_key(data)
        except Rejected as e:
            problems[index] = e
            with contextlib.suppress(Rejected):
                if split_material([data]).certificates:
                    problems[index] = Rejected(
                        "not_a_key",
                        "This file holds a certificate, not a private key: pass the key "
                        "generated with the certificate's request.",
                    )
    return problems
