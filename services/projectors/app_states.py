"""Folded app states for projections, reusing the aggregate's own `evolve`.

Projections that show an app (its domains, endpoints, what routers serve) fold the app's
stream with exactly the function the gateway decides with, so the read side can never
disagree with the write side about what an event means.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import get_args

import asyncpg

from events.union import AppEvent, tag_of
from services.domain import app as app_aggregate
from services.domain.app import AppState
from services.domain.streams import APP, app_stream
from services.storage.event_log import STORED_COLUMNS, StoredEvent, stored_event

# Every event of an app's stream, derived from the union so a new app event is never missed.
APP_EVENT_TYPES = frozenset(tag_of(t) for t in get_args(AppEvent))


_APP_PREFIX = f"{APP}-"
_APP_PREFIX_LENGTH = len(_APP_PREFIX)


class AppStates:
    """A bounded cache of app states as of the projection's checkpoint."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._states: OrderedDict[str, AppState] = OrderedDict()
        self._max = max_entries

    def reset(self) -> None:
        self._states.clear()

    async def get(
        self, conn: asyncpg.Connection, app: str, upto: int, next_version: int = 0
    ) -> AppState:
        """The app's state after every event at or below position `upto`.

        `next_version` is the stream version of the app's next event: when it is 1 the app
        has no history, which spares a query per new app (most of them, in a rebuild).
        """
        state = self._states.get(app)
        if state is None and next_version == 1:
            state = AppState(name=app)
        if state is None:
            rows = await conn.fetch(
                f"select {STORED_COLUMNS} from events where stream_id = $1 and position <= $2"
                " order by stream_version",
                app_stream(app),
                upto,
            )
            state = AppState(name=app)
            for row in rows:
                state = app_aggregate.evolve(state, stored_event(row).event)  # type: ignore[arg-type]
        self.put(app, state)
        return state

    async def transitions(
        self, conn: asyncpg.Connection, events: list[StoredEvent]
    ) -> list[tuple[str, AppState, AppState, StoredEvent]]:
        """Fold a batch: (app, state before, state after, event) for each app event, in order.

        The cache then holds the states after the batch; the runner resets it if the batch's
        transaction fails.
        """
        if not events:
            return []
        first = events[0].position
        states: dict[str, AppState] = {}
        steps = []
        for event in events:
            stream = event.stream_id  # per event of a rebuild: kept cheap
            if not stream.startswith(_APP_PREFIX):
                continue
            app = stream[_APP_PREFIX_LENGTH:]
            if app not in states:
                states[app] = await self.get(conn, app, first - 1, event.version)
            before = states[app]
            states[app] = after = app_aggregate.evolve(before, event.event)  # type: ignore[arg-type]
            steps.append((app, before, after, event))
        for app, state in states.items():
            self.put(app, state)
        return steps

    def put(self, app: str, state: AppState) -> None:
        self._states[app] = state
        self._states.move_to_end(app)
        while len(self._states) > self._max:
            self._states.popitem(last=False)
