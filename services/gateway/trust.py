"""The roots an uploaded chain must reach to show as trusted: the system store and the
operator's extra bundle (CERTPLANE_EXTRA_CA_FILE).

The operator's file is checked strictly: a typo in its path used to leave certplane
running without those roots, every certificate they issued shown as not trusted, and
nothing said why. The system store is taken as the distribution ships it, less any root
the library cannot load.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from services.config import ConfigError, Settings
from services.domain.x509_bundle import TrustStore, pem_roots

log = logging.getLogger("certplane.gateway")

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, if OpenSSL names none


def load_trust_store(settings: Settings) -> TrustStore:
    roots: list[x509.Certificate] = []
    if settings.trust_system_store:
        system = Path(ssl.get_default_verify_paths().cafile or SYSTEM_CA_FILE)
        if system.is_file():
            found, bad = pem_roots(system.read_bytes())
            roots += found
            if bad:
                log.info("skipped %d root(s) of %s that cannot be loaded", len(bad), system)
        else:
            log.warning("no system trust store at %s: only extra roots count", system)
    if settings.extra_ca_file:
        roots += _extra_roots(Path(settings.extra_ca_file))
    return TrustStore(roots)


def _extra_roots(path: Path) -> list[x509.Certificate]:
    variable = "CERTPLANE_EXTRA_CA_FILE"
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{variable} names {path}, which cannot be read ({e.strerror}): give the path of a "
            "PEM file of the root certificates to trust, or unset it."
        ) from None
    roots, bad = pem_roots(pem)
    if bad:
        raise ConfigError(
            f"{variable}: certificate {bad[0]} of {path} does not parse: the file must hold "
            "PEM certificates (-----BEGIN CERTIFICATE-----) only."
        )
    if not roots:
        raise ConfigError(
            f"{variable}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give "
            "the root certificates to trust, or unset it."
        )
    return roots
