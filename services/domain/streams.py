"""Stream ids: `<category>-<id>`. The category names the aggregate and the JetStream subject."""

from __future__ import annotations

APP = "app"
HOSTNAME = "hostname"
PROJECTION = "projection"


def app_stream(app: str) -> str:
    return f"{APP}-{app}"


def hostname_stream(hostname: str) -> str:
    return f"{HOSTNAME}-{hostname}"


def projection_stream(name: str) -> str:
    return f"{PROJECTION}-{name}"


def category(stream_id: str) -> str:
    return stream_id.partition("-")[0]


def stream_key(stream_id: str) -> str:
    """The app name or hostname a stream id is about."""
    return stream_id.partition("-")[2]
