"""Merkle trees against the Certificate Transparency (RFC 6962 / RFC 9162) test vectors, and
against deliberately broken proofs."""

from __future__ import annotations

import pytest

from services.domain.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# certificate-transparency's test vectors (testonly/constants.go), RFC 6962 hashing
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip
INCLUSION = {  # (index, size) -> path
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (0, 1): [],
}  # fmt: skip
CONSISTENCY = {  # (first, second) -> proof
    (1, 1): [],
    (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}  # fmt: skip
HASHES = [leaf_hash(d) for d in LEAVES]


def proof_from_ranges(ranges) -> list[bytes]:
    return [root_of(HASHES[lo:hi]) for lo, hi in ranges]


@pytest.mark.parametrize("size", range(9))
def test_tree_roots_match_the_ct_vectors(size: int) -> None:
    assert root_of(HASHES[:size]) == ROOTS[size]
    frontier = Frontier()
    for h in HASHES[:size]:
        frontier.append(h)
    assert frontier.root() == ROOTS[size] and frontier.size == size
    assert len(frontier.hashes) == bin(size).count("1")  # O(log n) memory


@pytest.mark.parametrize(("index", "size"), list(INCLUSION))
def test_inclusion_proofs_match_the_ct_vectors(index: int, size: int) -> None:
    expected = [bytes.fromhex(h) for h in INCLUSION[(index, size)]]
    assert proof_from_ranges(inclusion_ranges(index, size)) == expected
    assert verify_inclusion(HASHES[index], index, size, expected, ROOTS[size])


@pytest.mark.parametrize(("first", "second"), list(CONSISTENCY))
def test_consistency_proofs_match_the_ct_vectors(first: int, second: int) -> None:
    expected = [bytes.fromhex(h) for h in CONSISTENCY[(first, second)]]
    assert proof_from_ranges(consistency_ranges(first, second)) == expected
    assert verify_consistency(first, second, ROOTS[first], ROOTS[second], expected)


def test_every_proof_of_every_small_tree_verifies() -> None:
    for size in range(1, 9):
        for index in range(size):
            proof = proof_from_ranges(inclusion_ranges(index, size))
            assert verify_inclusion(HASHES[index], index, size, proof, ROOTS[size])
        for first in range(1, size + 1):
            proof = proof_from_ranges(consistency_ranges(first, size))
            assert verify_consistency(first, size, ROOTS[first], ROOTS[size], proof)


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_broken_inclusion_proofs_fail() -> None:
    proof = [bytes.fromhex(h) for h in INCLUSION[(5, 8)]]
    leaf, root = HASHES[5], ROOTS[8]
    assert not verify_inclusion(leaf, 4, 8, proof, root)  # wrong index
    assert not verify_inclusion(leaf, 5, 6, proof, root)  # wrong size (a tree of another shape)
    assert not verify_inclusion(leaf, 5, 8, proof[:-1], root)  # too short
    assert not verify_inclusion(leaf, 5, 8, [*proof, proof[0]], root)  # too long
    assert not verify_inclusion(leaf, 5, 8, list(reversed(proof)), root)  # reordered
    assert not verify_inclusion(HASHES[4], 5, 8, proof, root)  # another leaf
    assert not verify_inclusion(leaf, 8, 8, proof, root)  # out of range
    for i in range(len(proof)):
        broken = [flip(p) if j == i else p for j, p in enumerate(proof)]
        assert not verify_inclusion(leaf, 5, 8, broken, root)
    assert not verify_inclusion(leaf, 5, 8, proof, flip(root))


def test_broken_consistency_proofs_fail() -> None:
    proof = [bytes.fromhex(h) for h in CONSISTENCY[(6, 8)]]
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], proof[:-1])
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], [*proof, proof[0]])
    assert not verify_consistency(6, 8, ROOTS[5], ROOTS[8], proof)  # another old root
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[7], proof)  # another new root
    assert not verify_consistency(5, 8, ROOTS[6], ROOTS[8], proof)  # wrong size
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], [])
    assert not verify_consistency(1, 1, ROOTS[1], ROOTS[2], [])
    for i in range(len(proof)):
        broken = [flip(p) if j == i else p for j, p in enumerate(proof)]
        assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], broken)
    # a fork: same size 8, one leaf changed, proof from the honest size-6 tree
    forked = [*HASHES[:7], leaf_hash(b"forged")]
    forked_proof = [root_of(forked[lo:hi]) for lo, hi in consistency_ranges(6, 8)]
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], forked_proof)
    assert verify_consistency(6, 8, ROOTS[6], root_of(forked), forked_proof)  # ...of a fork
    assert EMPTY_ROOT == ROOTS[0]
