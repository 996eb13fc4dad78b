"""Merkle trees over the log, as RFC 9162 (Certificate Transparency 2.0) section 2.1 defines
them: leaf = H(0x00 ‖ data), node = H(0x01 ‖ left ‖ right), H = SHA-256, the split of n
leaves at the largest power of two below n. Pure.

Proofs are described as the leaf ranges whose subtree roots they contain, so a caller can
stream each range's leaves through a `Frontier` (memory O(log n), whatever the log's size)
instead of holding every leaf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass
class Frontier:
    """The roots of the perfect subtrees covering leaves [0, size), largest first: enough to
    append and to compute the root, in O(log size) memory."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash (already H(0x00 ‖ data))."""
        hashes = self.hashes
        hashes.append(leaf)
        size = self.size
        while size & 1:  # two subtrees of equal size merge into one: node_hash, inlined
            right = hashes.pop()
            hashes[-1] = _sha256(b"\x01" + hashes[-1] + right).digest()
            size >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            root = node_hash(h, root)
        return root


def root_of(leaves: Iterable[bytes]) -> bytes:
    """MTH of leaf hashes."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


Range = tuple[int, int]  # leaves [lo, hi)


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose roots make PATH(index, D[size]) (RFC 9162 2.1.3.1), in proof order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")

    def path(m: int, lo: int, hi: int) -> list[Range]:
        n = hi - lo
        if n <= 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, lo, lo + k), (lo + k, hi)]
        return [*path(m - k, lo + k, hi), (lo, lo + k)]

    return path(index, 0, size)


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The ranges whose roots make PROOF(first, D[second]) (RFC 9162 2.1.4.1)."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to {second}")

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[Range]:
        n = hi - lo
        if m == n:
            return [] if whole else [(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, lo, lo + k, whole), (lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), (lo, lo + k)]

    return subproof(first, 0, second, True)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `leaf` (a leaf hash) sit at `index` of the tree with `root`?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree of `second_root` an extension of the one of `first_root`?"""
    if first == second:
        return not proof and first_root == second_root
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a subtree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
