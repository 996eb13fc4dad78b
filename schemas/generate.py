"""Write schemas/json/: the JSON Schema of every command, event and reply, from the Structs.

Router authors in other languages read these. `python -m schemas.generate` rewrites them;
tests/unit/test_contract.py fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from events.audit import InclusionProof, TreeHead
from events.codec import CommandEnvelope
from events.replies import CommandReply, QueryReply
from events.router import ConfigCheckpoint, RouterConfigEntry, RouterStatus
from events.union import AnyCommand, AnyEvent

OUT = Path(__file__).parent / "json"

DOCUMENTS = {
    "CommandEnvelope": CommandEnvelope,
    "Command": AnyCommand,
    "Event": AnyEvent,
    "CommandReply": CommandReply,
    "QueryReply": QueryReply,
    "RouterConfigEntry": RouterConfigEntry,
    "RouterStatus": RouterStatus,
    "ConfigCheckpoint": ConfigCheckpoint,
    "TreeHead": TreeHead,
    "InclusionProof": InclusionProof,
}


def render() -> dict[str, str]:
    """File name -> content of every schema document."""
    files = {}
    for name, type_ in DOCUMENTS.items():
        schema = msgspec.json.schema(type_)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": name,
            **schema,
        }
        files[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for stale in OUT.glob("*.json"):
        stale.unlink()
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote schemas/json/{name}")


if __name__ == "__main__":
    main()
