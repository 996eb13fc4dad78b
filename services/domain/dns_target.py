"""DNS targets: `<adjective>-<noun>-<random>.<zone>`, derived from a seed (the event id).

Deterministic, so a projection rebuilt from position 0 allocates the very same names; on a
collision the caller re-draws with the next attempt number, a bounded number of times.
"""

from __future__ import annotations

import hashlib

ADJECTIVES = (
    "agile", "amber", "ancient", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp",
    "curious", "daring", "eager", "elegant", "exemplary", "fancy", "fierce", "gentle", "glowing",
    "graceful", "happy", "humble", "jolly", "keen", "kind", "lively", "lucky", "majestic",
    "mellow", "mighty", "nimble", "noble", "polished", "proud", "quick", "quiet", "radiant",
    "rapid", "serene", "shiny", "silent", "sleek", "smooth", "solid", "spirited", "steady",
    "sturdy", "sunny", "swift", "tidy", "vivid", "warm", "whispering", "wise", "witty", "zesty",
)  # fmt: skip
NOUNS = (
    "anchor", "aurora", "badger", "beacon", "birch", "canyon", "cedar", "comet", "coral", "crane",
    "delta", "dune", "falcon", "fern", "fjord", "glacier", "harbor", "heron", "island", "juniper",
    "lagoon", "lantern", "maple", "meadow", "mesa", "nebula", "oasis", "orchid", "otter", "pebble",
    "pine", "prairie", "quartz", "raven", "reef", "river", "sequoia", "summit", "sushi", "tundra",
    "valley", "willow", "wombat", "zephyr",
)  # fmt: skip
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_DRAWS = 16


TargetKey = int
_SPACE = 36**24


_SEED_PREFIX = "certplane-dns-target/"


def target_key(seed: str, attempt: int) -> TargetKey:
    """What a target is made of, as one int; equal keys and only equal keys render to equal
    targets, so collisions can be checked without rendering (a replay renders only what it
    shows, and keeps one int per hostname)."""
    return key_of_digest(hashlib.sha256(f"{_SEED_PREFIX}{seed}/{attempt}".encode()).digest())


def key_of_digest(digest: bytes) -> TargetKey:
    """The key a draw's SHA-256 digest stands for."""
    adjective = digest[0] % len(ADJECTIVES)
    noun = digest[1] % len(NOUNS)
    number = int.from_bytes(digest[2:20], "big") % _SPACE
    return (adjective * len(NOUNS) + noun) * _SPACE + number


def first_draw_digest_sql(seed_sql: str) -> str:
    """SQL for the digest `target_key(seed, 0)` hashes, so that a reader of the log can have
    PostgreSQL hash on its own core (a replay draws once per DomainAdded; ~1.2 µs each here)."""
    return f"sha256(convert_to('{_SEED_PREFIX}' || {seed_sql} || '/0', 'UTF8'))"


# Base-36 digits three at a time, least significant first (as the name has always been
# spelled): a replay renders a target per domain, and digit by digit on a big int was 15 % of
# it. The table of all 46,656 triples is ~2.5 MB and takes ~5 ms to build.
_PAIRS = tuple(_ALPHABET[i % 36] + _ALPHABET[i // 36] for i in range(36 * 36))
_TRIPLES = tuple([pair + high for high in _ALPHABET for pair in _PAIRS])
_HALF = 36**12  # below 2**63: the halves divide as small ints
_T = 36**3


def render(key: TargetKey, zone: str) -> str:
    rest, number = divmod(key, _SPACE)
    adjective, noun = divmod(rest, len(NOUNS))
    high, low = divmod(number, _HALF)
    low, a = divmod(low, _T)
    low, b = divmod(low, _T)
    d, c = divmod(low, _T)
    high, e = divmod(high, _T)
    high, f = divmod(high, _T)
    h, g = divmod(high, _T)
    t = _TRIPLES
    digits = f"{t[a]}{t[b]}{t[c]}{t[d]}{t[e]}{t[f]}{t[g]}{t[h]}"
    return f"{ADJECTIVES[adjective]}-{NOUNS[noun]}-{digits}.{zone}"


def dns_target(seed: str, attempt: int, zone: str) -> str:
    """The DNS target for `seed` at re-draw `attempt` (0 first)."""
    return render(target_key(seed, attempt), zone)
