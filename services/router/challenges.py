"""ACME HTTP-01 answers served on the plain-HTTP listener (RFC 8555 section 8.3)."""

from __future__ import annotations

from typing import Protocol


class Challenges(Protocol):
    """Key authorizations by token. Contract: `get` is cheap and never blocks (it runs on
    the request path); an unknown token is None."""

    def get(self, token: str) -> str | None: ...


class NoChallenges:
    """Until ACM issues orders, no token is known (answers 404)."""

    def get(self, token: str) -> str | None:
        return None
