"""Array parameters sent as one value each, split back by PostgreSQL.

asyncpg encodes an array parameter element by element in Python, checking each element
against `collections.abc` types: for the append's 21 arrays that was a tenth of a gateway's
CPU per command, and for a batch of router bundles six times the rest of the write. One string
(or one bytes value) per array, split in SQL by C code, costs a join here instead.

Each helper pairs the SQL expression for parameter `$n` with the Python value it expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

UNIT = "\x1f"  # ASCII unit separator: in no JSON text (escaped there), id, hostname or PEM


def text_array(n: int, cast: str = "text") -> str:
    """`$n` (from `units`) as a `cast`[]: the leading separator, then dropping element 1,
    keeps a lone empty value (`string_to_array('')` is an empty array, not one empty
    string); NULL is the empty array."""
    return f"coalesce((string_to_array(E'\\x1f' || ${n}, E'\\x1f'))[2:]::{cast}[], '{{}}')"


def units(values: Sequence[str]) -> str | None:
    """Values for `text_array`; a value holding the separator is refused, never split."""
    if not values:
        return None
    joined = UNIT.join(values)
    if joined.count(UNIT) != len(values) - 1:
        raise ValueError("a value sent to PostgreSQL contains the unit separator (0x1f)")
    return joined


def integer_array(n: int) -> str:
    """`$n` (from `integers`) as an integer[]."""
    return f"string_to_array(${n}, ',')::integer[]"


def integers(values: Iterable[int]) -> str:
    return ",".join(map(str, values))


def bytea_array(n: int) -> str:
    """`$n` (from `hex_values`) as a bytea[], split and decoded by C code. Not a subquery
    over one bytes value: PostgreSQL planned a statement holding one again at every execution
    (its generic plan's row estimate looked dearer than each custom plan), a tenth of the
    append's time there."""
    return f"coalesce(string_to_array(${n}, ',')::bytea[], '{{}}')"


def hex_values(values: Sequence[bytes]) -> str | None:
    """Values for `bytea_array`, each in PostgreSQL's hex format (`\\x` and the digits)."""
    if not values:
        return None
    return ",".join(["\\x" + v.hex() for v in values])
