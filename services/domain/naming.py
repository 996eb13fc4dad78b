"""Names certplane checks or makes: app names, and endpoint names derived from a seed.

Endpoint names look like Heroku's (`tyrannosaurus-40391`). They are derived from the
command id, not drawn at random, so `decide` stays pure and a retried command gets the
same name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Set as AbstractSet

from services.domain.errors import Rejected

_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{1,28}[a-z0-9]$")

DINOSAURS = (
    "allosaurus", "ankylosaurus", "apatosaurus", "brachiosaurus", "carnotaurus",
    "coelophysis", "compsognathus", "deinonychus", "diplodocus", "dilophosaurus",
    "edmontosaurus", "gallimimus", "iguanodon", "kentrosaurus", "maiasaura",
    "megalosaurus", "microraptor", "oviraptor", "pachycephalosaurus", "parasaurolophus",
    "protoceratops", "spinosaurus", "stegosaurus", "styracosaurus", "triceratops",
    "troodon", "tyrannosaurus", "utahraptor", "velociraptor", "zuniceratops",
)  # fmt: skip


def validate_app_name(name: str) -> str:
    """Return the name if it is a valid app name, else raise `Rejected("invalid_app_name")`."""
    if not _APP_NAME.match(name):
        raise Rejected(
            "invalid_app_name",
            f"{name!r} is not a valid app name: use 3 to 30 lower-case letters, digits and "
            "dashes, starting with a letter and not ending with a dash.",
            app=name,
        )
    return name


def generated_app_name(seed: str) -> str:
    """A name for `apps:create` without one, as Heroku makes them: `sleek-otter-40391`."""
    from services.domain.dns_target import ADJECTIVES, NOUNS

    digest = hashlib.sha256(f"app/{seed}".encode()).digest()
    adjective = ADJECTIVES[int.from_bytes(digest[0:2], "big") % len(ADJECTIVES)]
    noun = NOUNS[int.from_bytes(digest[2:4], "big") % len(NOUNS)]
    return validate_app_name(
        f"{adjective}-{noun}-{int.from_bytes(digest[4:8], 'big') % 100000:05d}"
    )


def endpoint_name(seed: str, taken: AbstractSet[str]) -> str:
    """A name not in `taken`, chosen deterministically from `seed`."""
    for attempt in range(1000):
        digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
        word = DINOSAURS[digest[0] % len(DINOSAURS)]
        name = f"{word}-{int.from_bytes(digest[1:5], 'big') % 100000:05d}"
        if name not in taken:
            return name
    raise RuntimeError("no free endpoint name after 1000 draws")  # 30×10⁵ names: unreachable
