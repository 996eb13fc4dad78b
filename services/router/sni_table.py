"""The SNI table: which route answers a TLS ClientHello's server name, and its SSLContext.

Lookup is exact name first, then the wildcard one label up (`a.b.example` -> `*.b.example`),
as RFC 6125 matching allows; nothing else, so an unknown name never receives another
customer's certificate. SSLContexts are built per certificate (shared by its hostnames) and
kept in an LRU: building one costs ~1 ms and ~20 KB, so 10,000 hostnames keep their
material in memory but only the recently used certificates hold a context.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import Callable, Iterable

from services.domain.domain_name import sni_candidates as candidates
from services.router.material import Material, Route

ContextFactory = Callable[[bytes, bytes], ssl.SSLContext]


class SniTable:
    def __init__(self, factory: ContextFactory, *, contexts: int = 2_000) -> None:
        self._routes: dict[str, Route] = {}
        self._contexts: OrderedDict[tuple[str, str], ssl.SSLContext] = OrderedDict()
        self._factory = factory
        self.capacity = contexts

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, hostname: str) -> Route | None:
        return self._routes.get(hostname)

    def hostnames(self) -> Iterable[str]:
        return self._routes.keys()

    def lookup(self, server_name: str) -> Route | None:
        for name in candidates(server_name):
            route = self._routes.get(name)
            if route is not None:
                return route
        return None

    def put(self, route: Route, *, warm: bool = True) -> None:
        """Serve `route` from now on (new handshakes); `warm` builds its context now, which
        also proves OpenSSL accepts the material (raises ssl.SSLError before it is served)."""
        if warm:
            self.context(route.material)
        self._routes[route.hostname] = route

    def remove(self, hostname: str) -> Route | None:
        return self._routes.pop(hostname, None)

    def has_room(self) -> bool:
        """Whether another context fits without evicting one."""
        return len(self._contexts) < self.capacity

    def context(self, material: Material) -> ssl.SSLContext:
        """The SSLContext of `material`, built on first use and kept while recently used."""
        key = material.identity
        ctx = self._contexts.get(key)
        if ctx is not None:
            self._contexts.move_to_end(key)
            return ctx
        ctx = self._factory(material.chain_pem, material.key_pem)
        self._contexts[key] = ctx
        while len(self._contexts) > self.capacity:
            self._contexts.popitem(last=False)
        return ctx

    def materials_in_use(self) -> set[tuple[str, str]]:
        return {r.material.identity for r in self._routes.values()}

    def drop_unused_contexts(self) -> None:
        used = self.materials_in_use()
        for key in [k for k in self._contexts if k not in used]:
            del self._contexts[key]
