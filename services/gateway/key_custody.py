"""The gateway's custody of key material: the master key, and preparing uploaded bundles.

Preparing a bundle is where a private key exists in clear, in memory only: it is unsealed
from the command, validated against the chain, and encrypted under a fresh data key whose
wrapped form is stored beside (not in) the log.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from events.endpoint import SealedKey
from services.config import Settings
from services.domain.app import PreparedCert
from services.domain.key_envelope import DataKey, MasterKey, gateway_key_id, public_bytes, unseal
from services.domain.x509_bundle import TrustStore, inspect_bundle
from services.key_files import read_or_create
from services.storage.event_log import NewDataKey


def load_master_key(settings: Settings, *, create: bool = False) -> MasterKey:
    """From CERTPLANE_MASTER_KEY, else the key file (created 0600 when `create`)."""
    if settings.master_key:
        return MasterKey.from_text(settings.master_key)
    path = Path(settings.master_key_file)
    missing = (
        f"no master key: set CERTPLANE_MASTER_KEY or create {path} (`certplane dev` creates one)"
    )
    return MasterKey(read_or_create(path, create=create, missing=missing))


@dataclass(frozen=True)
class PreparedUpload:
    cert: PreparedCert
    new_key: NewDataKey


class KeyCustody:
    def __init__(self, master: MasterKey, trust: TrustStore) -> None:
        self._master = master
        self._transport = master.transport_private_key()
        self.public_key = public_bytes(self._transport.public_key())
        self.key_id = gateway_key_id(self.public_key)
        self.trust = trust

    def prepare(
        self, certificates: list[bytes], sealed: SealedKey, now: dt.datetime
    ) -> PreparedUpload:
        """Unseal, validate and re-encrypt; raises `Rejected` on a bad bundle."""
        key_bytes = unseal(sealed, self._transport)
        bundle = inspect_bundle(certificates, key_bytes, now=now, trust=self.trust)
        data_key = DataKey.generate()
        encrypted = data_key.encrypt(bundle.private_key_pem)
        return PreparedUpload(
            cert=PreparedCert(facts=bundle.facts, chain_pem=bundle.chain_pem, key=encrypted),
            new_key=NewDataKey(data_key.key_id, self._master.key_id, data_key.wrap(self._master)),
        )
