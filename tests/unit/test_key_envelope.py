"""Envelope encryption: sealed to the gateway, encrypted at rest, shreddable."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.exceptions import InvalidTag

from services.domain.errors import Rejected
from services.domain.key_envelope import DataKey, MasterKey, public_bytes, seal_for_gateway, unseal

SECRET = b"-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n"


def test_sealed_key_opens_only_with_the_gateway_key() -> None:
    master = MasterKey.generate()
    gw = master.transport_private_key()
    sealed = seal_for_gateway(SECRET, public_bytes(gw.public_key()))
    assert SECRET not in sealed.ciphertext
    assert unseal(sealed, gw) == SECRET
    other = MasterKey.generate().transport_private_key()
    with pytest.raises(Rejected) as e:
        unseal(sealed, other)
    assert e.value.code == "sealed_key_invalid"


def test_a_tampered_seal_is_refused() -> None:
    gw = MasterKey.generate().transport_private_key()
    sealed = seal_for_gateway(SECRET, public_bytes(gw.public_key()))
    flipped = msgspec.structs.replace(
        sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    )
    with pytest.raises(Rejected):
        unseal(flipped, gw)


def test_every_gateway_with_the_same_master_derives_the_same_transport_key() -> None:
    master = MasterKey.generate()
    a = public_bytes(master.transport_private_key().public_key())
    b = public_bytes(MasterKey(master.secret).transport_private_key().public_key())
    assert a == b


def test_data_key_round_trip_and_shredding() -> None:
    master = MasterKey.generate()
    data_key = DataKey.generate()
    encrypted = data_key.encrypt(SECRET)
    wrapped = data_key.wrap(master)
    assert DataKey.unwrap(data_key.key_id, wrapped, master).decrypt(encrypted) == SECRET
    # Once the wrapped data key is gone, no other key opens the ciphertext.
    with pytest.raises(InvalidTag):
        DataKey.generate().decrypt(encrypted)
    with pytest.raises(InvalidTag):
        DataKey.unwrap(data_key.key_id, wrapped, MasterKey.generate())


def test_secrets_stay_out_of_repr() -> None:
    master = MasterKey.generate()
    data_key = DataKey.generate()
    assert master.to_text() not in repr(master)
    assert data_key.secret.hex() not in repr(data_key) and "secret" not in repr(data_key)


def test_master_key_text_is_validated() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey.from_text("c2hvcnQ=")


def test_router_seals_are_deterministic_and_open_only_with_the_router_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from services.domain.key_envelope import RouterSealer, open_router_seal

    router = X25519PrivateKey.generate()
    public = public_bytes(router.public_key())
    master = MasterKey.generate()
    data_key = DataKey.generate()
    sealer = RouterSealer.for_master(master, public)
    a = sealer.seal(SECRET, key_id=data_key.key_id, derivation_secret=data_key.secret)
    again = RouterSealer.for_master(master, public)  # e.g. a restarted or rebuilding projector
    b = again.seal(SECRET, key_id=data_key.key_id, derivation_secret=data_key.secret)
    assert a == b and SECRET not in a.ciphertext  # a rebuild seals to the very same bytes
    assert open_router_seal(a, router) == SECRET
    with pytest.raises(InvalidTag):
        open_router_seal(a, X25519PrivateKey.generate())
    tampered = msgspec.structs.replace(a, key_id=DataKey.generate().key_id)
    with pytest.raises(InvalidTag):  # the data key id is bound as associated data
        open_router_seal(tampered, router)
    # One AES key serves every seal: the nonce differs with the data key and the plaintext.
    other = DataKey.generate()
    c = sealer.seal(SECRET, key_id=other.key_id, derivation_secret=other.secret)
    d = sealer.seal(b"another key", key_id=data_key.key_id, derivation_secret=data_key.secret)
    assert len({a.nonce, c.nonce, d.nonce}) == 3
    assert open_router_seal(d, router) == b"another key"


def test_a_router_opens_seals_from_several_projectors_and_refuses_tampered_ones() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from services.domain.key_envelope import RouterSealer, RouterSealOpener

    router = X25519PrivateKey.generate()
    public = public_bytes(router.public_key())
    opener = RouterSealOpener(router)
    for master in (MasterKey.generate(), MasterKey.generate()):  # e.g. after a master rotation
        data_key = DataKey.generate()
        seal = RouterSealer.for_master(master, public).seal(
            SECRET, key_id=data_key.key_id, derivation_secret=data_key.secret
        )
        assert opener.open(seal) == SECRET
        flipped = bytes([seal.ciphertext[0] ^ 1]) + seal.ciphertext[1:]
        with pytest.raises(InvalidTag):  # the sender's key is cached; the tag still checks
            opener.open(msgspec.structs.replace(seal, ciphertext=flipped))
    with pytest.raises(InvalidTag):
        RouterSealOpener(X25519PrivateKey.generate()).open(seal)
