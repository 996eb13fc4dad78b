"""Where each app's traffic goes: `--upstream APP=URL` (APP `*` for every other app), also
from CERTPLANE_ROUTER_UPSTREAMS (`APP=URL,APP=URL`); a later mapping of an app wins.

`echo` as the URL is the built-in echo upstream (for the demo): the router answers itself
with what it would have sent an upstream, as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

ECHO = "echo"


@dataclass(frozen=True)
class Upstream:
    url: str
    host: str = ""
    port: int = 0

    @property
    def is_echo(self) -> bool:
        return self.url == ECHO


def parse_upstream(text: str) -> tuple[str, Upstream]:
    """`APP=URL` -> (app, Upstream); a ValueError says what to write instead."""
    app, eq, url = text.partition("=")
    if not eq or not app or not url:
        raise ValueError(f"--upstream {text!r}: write APP=URL (e.g. shop=http://127.0.0.1:5000)")
    if url == ECHO:
        return app, Upstream(ECHO)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"--upstream {text!r}: the URL must be http://HOST[:PORT] (or `echo`); "
            "routers terminate TLS and speak plain HTTP/1.1 to apps"
        )
    return app, Upstream(url, parts.hostname, parts.port or 80)


class Upstreams:
    def __init__(self, mapping: dict[str, Upstream]) -> None:
        self._mapping = dict(mapping)

    @classmethod
    def parse(cls, items: list[str]) -> Upstreams:
        return cls(dict(parse_upstream(item) for item in items))

    def for_app(self, app: str) -> Upstream | None:
        return self._mapping.get(app) or self._mapping.get("*")
