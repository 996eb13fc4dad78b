"""The app: the unit of tenancy. Its stream holds its domains and endpoints too."""

from __future__ import annotations

from events.base import AppCommand, Event


class CreateApp(AppCommand, tag="app.create"):
    pass


class DestroyApp(AppCommand, tag="app.destroy"):
    pass


class AppCreated(Event, tag="app.created"):
    app: str


class AppDestroyed(Event, tag="app.destroyed"):
    """The app is gone with all its domains and endpoints; listed data keys were destroyed."""

    app: str
    shredded_key_ids: list[str] = []
