"""A development certificate authority: roots, intermediates and leaves for demos and tests.

Never for production: keys are generated here and written unencrypted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    """`ec` (P-256), `ec384`, or `rsa2048` / `rsa1024` / `rsa4096`."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(f"unknown key kind {kind!r}")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certplane dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def issue(
    subject_cn: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    sans: list[str] | None = None,
    key: PrivateKey | None = None,
    key_kind: str = "ec",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A certificate signed by `issuer` (self-signed when None)."""
    now = dt.datetime.now(dt.UTC)
    key = key or new_key(key_kind)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer.cert.subject if issuer else _name(subject_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class DevCA:
    root: Issued
    intermediate: Issued

    @classmethod
    def create(cls, name: str = "certplane dev") -> DevCA:
        root = issue(
            f"{name} root CA", ca=True, not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
        )
        return cls(root, issue(f"{name} intermediate CA", issuer=root, ca=True))

    def leaf(self, *hostnames: str, **kwargs: object) -> Issued:
        return issue(hostnames[0], issuer=self.intermediate, sans=list(hostnames), **kwargs)  # type: ignore[arg-type]

    def write(self, directory: Path, leaf: Issued, stem: str = "server") -> dict[str, Path]:
        """server.crt (leaf), chain.crt (intermediate), server.key, ca.crt (root)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "crt": directory / f"{stem}.crt",
            "chain": directory / "chain.crt",
            "key": directory / f"{stem}.key",
            "ca": directory / "ca.crt",
        }
        files["crt"].write_bytes(leaf.cert_pem)
        files["chain"].write_bytes(self.intermediate.cert_pem)
        files["key"].write_bytes(leaf.key_pem)
        files["key"].chmod(0o600)
        files["ca"].write_bytes(self.root.cert_pem)
        return files

    def save(self, directory: Path) -> None:
        """Keep the CA (keys 0600) so later leaves chain to the same root."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, issued in (("root", self.root), ("intermediate", self.intermediate)):
            (directory / f"{name}.crt").write_bytes(issued.cert_pem)
            key = directory / f"{name}.key"
            key.touch(mode=0o600)
            key.write_bytes(issued.key_pem)

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "certplane dev") -> DevCA:
        def load(stem: str) -> Issued:
            cert = x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())
            key = serialization.load_pem_private_key(
                (directory / f"{stem}.key").read_bytes(), password=None
            )
            return Issued(cert, key)  # type: ignore[arg-type]

        if (directory / "intermediate.key").exists():
            return cls(load("root"), load("intermediate"))
        ca = cls.create(name)
        ca.save(directory)
        return ca
