"""Which gateway takes an app's commands while two gateways contend for its stream.

The queue group hands each command to any gateway. When many clients drive one app at
once, every gateway pipelines its commands (`handler._pending`), and each append one
gateway wins makes the other's whole pending chain fail and decide again. Measured with 64
clients on one app and two gateways: 300-600 commands/s with p99 over a second, against
6,000/s with one gateway, and in a slow phase of the machine commands ran out of retries
("busy"). Systems of actors give an entity one owner at a time (Orleans, Akka's cluster
sharding); here a gateway claims an app only while it is contended, so the common case
(many apps, a command at a time each) pays nothing.

The rule: when a command's append fails on its app's stream and another gateway announced
an append to that stream within `WINDOW_S` (`coherence`), the app is contended, and this
gateway hands the app's commands to that one, the one winning the stream, for as long as
it keeps appending to the app (its announcements renew the claim); after `WINDOW_S`
without, it takes them itself again. A forwarded command is never forwarded again. Should
two gateways each hand the app to the other, the one with the smaller id keeps it when the
other's first forwarded command arrives. If the owner does not answer (it stopped), the
command is decided here and the claim forgotten: a forwarded command that did reach the log
is found by its command id, so nothing happens twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from services.domain.streams import APP

WINDOW_S = 2.0
_APP_PREFIX = f"{APP}-"


class Affinity:
    def __init__(
        self,
        own_id: str,
        *,
        window_s: float = WINDOW_S,
        max_apps: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.own_id = own_id
        self.window_s = window_s
        self._clock = clock
        self._max = max_apps
        # app -> (the gateway that last announced an append to it, when)
        self._writers: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._owners: dict[str, str] = {}  # app -> the other gateway that takes its commands
        # app -> (the gateway that last forwarded one of its commands here, when)
        self._handed_in: dict[str, tuple[str, float]] = {}

    def wrote(self, gateway: str, streams: Iterable[str]) -> None:
        """Another gateway announced appends to these streams."""
        now = self._clock()
        for stream in streams:
            if stream.startswith(_APP_PREFIX):
                app = stream[len(_APP_PREFIX) :]
                self._writers[app] = (gateway, now)
                self._writers.move_to_end(app)
        while len(self._writers) > self._max:
            app, _ = self._writers.popitem(last=False)
            self._owners.pop(app, None)

    def contended(self, app: str) -> str | None:
        """An append to the app's stream failed here: the gateway to hand the app's commands
        to (the one that won the stream), or None if no other gateway is appending to it or
        this one keeps the app (that gateway hands it here too, and this id is smaller)."""
        writer = self._recent_writer(app)
        if writer is None:
            return None
        handing = self._handed_in.get(app)
        if (
            handing is not None
            and handing[0] == writer
            and self._clock() - handing[1] <= self.window_s
            and self.own_id < writer
        ):
            return None  # its commands already come here; the ones it has in flight drain
        self._owners[app] = writer
        return writer

    def handed_over(self, app: str, gateway: str) -> None:
        """`gateway` forwarded one of the app's commands here: if this gateway was handing
        the app to it at the same time, the smaller id keeps the app."""
        self._handed_in[app] = (gateway, self._clock())
        if len(self._handed_in) > self._max:
            self._handed_in.clear()  # only a hint; it is renewed by the next forward
        if self._owners.get(app) == gateway and self.own_id < gateway:
            del self._owners[app]

    def owner(self, app: str) -> str | None:
        """The other gateway that takes this app's commands now, if any."""
        owner = self._owners.get(app)
        if owner is None:
            return None
        if self._recent_writer(app) is None:
            del self._owners[app]  # the contention is over: take the app's commands again
            return None
        return owner

    def forget(self, app: str, gateway: str) -> None:
        """`gateway` did not answer a forwarded command: decide the app's commands here."""
        if self._owners.get(app) == gateway:
            del self._owners[app]
        writer = self._writers.get(app)
        if writer is not None and writer[0] == gateway:
            del self._writers[app]

    def _recent_writer(self, app: str) -> str | None:
        writer = self._writers.get(app)
        if writer is None or self._clock() - writer[1] > self.window_s:
            return None
        return writer[0]
