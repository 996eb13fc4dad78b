"""Every NATS subject, KV key and stream name certplane uses is built here (STYLE 14).

The prefix (default `certplane`) lets tests and several installations share one NATS.
Command subjects carry the app name, which `validate_app_name` restricts to [a-z0-9-],
so it is always a safe NATS token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NON_APP = "_"  # the app token of requests that concern no single app (app names never are "_")


@dataclass(frozen=True)
class Subjects:
    prefix: str = "certplane"

    def command(self, app: str, command: str) -> str:
        return f"{self.prefix}.cmd.{app}.{command}"

    def all_commands(self) -> str:
        return f"{self.prefix}.cmd.>"

    def query(self, app: str, view: str) -> str:
        return f"{self.prefix}.query.{app}.{view}"

    def all_queries(self) -> str:
        return f"{self.prefix}.query.>"

    def gateway_appended(self) -> str:
        """Where each gateway announces the events it appended, for the others' caches."""
        return f"{self.prefix}.gateway.appended"

    def gateway_commands(self, gateway: str, app: str = "*", command: str = "*") -> str:
        """One gateway's own command subject: the commands of an app it owns while it is
        contended, forwarded by the other gateways (see `gateway.affinity`)."""
        return f"{self.prefix}.gateway.{gateway}.cmd.{app}.{command}"

    def rebuild(self, projection: str) -> str:
        """Answered by the instance leading `projection` (standbys stay silent)."""
        return f"{self.prefix}.ops.projections.{projection}.rebuild"

    def audit_checkpoints(self) -> str:
        """Where the sealer publishes each signed tree head (keep them outside our reach)."""
        return f"{self.prefix}.audit.checkpoints"

    def router_status(self, router_id: str) -> str:
        """Where router `router_id` reports what it serves (see `router_id_token`)."""
        return f"{self.prefix}.router.{router_id}.status"

    def all_router_statuses(self) -> str:
        return f"{self.prefix}.router.*.status"


GATEWAY_QUEUE = "gateway"


CHECKPOINT_KEY = "_checkpoint"  # never a hostname's key: `*` only ever stands as a whole label


def router_id_token(text: str) -> str:
    """A router id as one safe NATS token: letters, digits, `-` and `_` only."""
    token = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    if not token:
        raise ValueError(f"{text!r} cannot be a router id: use letters, digits, '-' or '_'")
    return token


def kv_key(hostname: str) -> str:
    """A hostname as a KV key: `*` (wildcards) is not allowed there, `_` never is in hostnames."""
    return hostname.replace("*", "_")


def hostname_of_kv_key(key: str) -> str:
    return key.replace("_", "*")
