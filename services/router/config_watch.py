"""Watching ROUTER_CONFIG: an initial snapshot, then every change, applied to the SNI table.

Each KV value is one hostname's entry; `_checkpoint` says which log position the entries
before it reflect. An entry the router cannot load is NACKed and the previous one stays
served. After a NATS reconnect, or when the bucket's stream is not where the watch left it
(the server restarted, the bucket was wiped), the watch starts over from a fresh snapshot;
entries whose KV revision it already applied cost nothing, so resyncing is cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from events.router import ConfigCheckpoint, Nack, RouterConfigEntry
from services.router.material import MaterialLoader, Unloadable
from services.router.sni_table import SniTable
from services.subjects import CHECKPOINT_KEY, hostname_of_kv_key, kv_key

log = logging.getLogger("certplane.router.config")
_ENTRY = msgspec.json.Decoder(RouterConfigEntry)
_CHECKPOINT = msgspec.json.Decoder(ConfigCheckpoint)
RETRY_SCHEDULE = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between attempts to (re)start the watch


class ConfigWatcher:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        table: SniTable,
        loader: MaterialLoader,
        on_change: Callable[[], None],
        *,
        check_every: float = 5.0,
    ) -> None:
        self.js, self.bucket, self.table, self.loader = js, bucket, table, loader
        self.on_change = on_change
        self.check_every = check_every
        self.position = 0  # the ConfigCheckpoint applied
        self.nacks: dict[str, Nack] = {}
        self.synced = asyncio.Event()  # the first snapshot is applied
        self._revisions: dict[str, int] = {}  # KV key -> revision applied (or refused)
        self._last_revision = 0
        self._resync = asyncio.Event()

    def resync(self) -> None:
        """Start over from a snapshot (called on NATS reconnect)."""
        self._resync.set()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            self._resync.clear()
            try:
                await self._watch(stop)
                attempt = 0
            except Exception as e:  # any failure: wait, then start over from a snapshot
                delay = RETRY_SCHEDULE[min(attempt, len(RETRY_SCHEDULE) - 1)]
                attempt += 1
                if isinstance(e, BucketNotFoundError):
                    log.info("no bucket %s yet (is `certplane projector` running?); "
                             "retrying in %.1fs", self.bucket, delay)  # fmt: skip
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                log.warning("watching %s failed (%s); attempt %d in %.1fs",
                            self.bucket, e or type(e).__name__, attempt, delay)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _watch(self, stop: asyncio.Event) -> None:
        kv = await self.js.key_value(self.bucket)
        watcher = await kv.watchall()
        snapshot: set[str] | None = set()  # keys seen before the end-of-snapshot marker
        try:
            while not stop.is_set() and not self._resync.is_set():
                try:
                    entry = await watcher.updates(timeout=self.check_every)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    if await self._stream_moved(kv):
                        log.info("%s changed under the watch; resyncing", self.bucket)
                        return
                    continue
                if entry is None:
                    if snapshot is not None:
                        self._end_snapshot(snapshot)
                        snapshot = None
                        self.synced.set()
                        self.on_change()
                    continue
                if snapshot is not None:
                    snapshot.add(entry.key)
                self._apply(entry, warm=snapshot is None or self.table.has_room())
                if snapshot is None and watcher._updates.empty():
                    self.on_change()  # report once per burst of updates, not per entry
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _stream_moved(self, kv: KeyValue) -> bool:
        """True when the bucket's stream holds messages the watch has not delivered."""
        try:
            status = await kv.status()
        except (BucketNotFoundError, NotFoundError):
            return True
        return bool(status.stream_info.state.last_seq != self._last_revision)

    def _end_snapshot(self, keys: set[str]) -> None:
        # Hosts absent from a snapshot were removed while we were away (or the bucket was
        # wiped). A bucket the projector has not repopulated yet has no checkpoint: keep
        # serving what we have rather than drop every host.
        if CHECKPOINT_KEY not in keys:
            return
        for host in list(self.table.hostnames()):
            if kv_key(host) not in keys:
                self.table.remove(host)
                self._revisions.pop(kv_key(host), None)
        for host in [h for h in self.nacks if kv_key(h) not in keys]:
            del self.nacks[host]
        self.loader.forget(self.table.materials_in_use())
        self.table.drop_unused_contexts()

    def _apply(self, entry: KeyValue.Entry, *, warm: bool) -> None:
        self._last_revision = max(self._last_revision, entry.revision or 0)
        key = entry.key
        if self._revisions.get(key) == entry.revision:
            return  # applied before a resync
        self._revisions[key] = entry.revision or 0
        deleted = entry.operation in (KV_DEL, KV_PURGE)
        if key == CHECKPOINT_KEY:
            if not deleted and entry.value:
                self.position = _CHECKPOINT.decode(entry.value).position
            return
        host = hostname_of_kv_key(key)
        if deleted:
            self.table.remove(host)
            self.nacks.pop(host, None)
            return
        try:
            config = _ENTRY.decode(entry.value or b"")
        except msgspec.DecodeError as e:
            self._nack(host, 0, f"the entry is not a RouterConfigEntry ({e})")
            return
        if config.hostname != host:
            self._nack(host, config.position, f"the entry names {config.hostname}, not {host}")
            return
        try:
            self.table.put(self.loader.route(config), warm=warm)
        except Unloadable as e:
            self._nack(host, config.position, e.reason)
            return
        except ssl.SSLError as e:
            self._nack(host, config.position, f"OpenSSL refused the chain or key ({e.reason})")
            return
        self.nacks.pop(host, None)

    def _nack(self, host: str, position: int, reason: str) -> None:
        previous = self.table.get(host)
        kept = f"; still serving position {previous.position}" if previous else ""
        log.warning("NACK %s at position %d: %s%s", host, position, reason, kept)
        self.nacks[host] = Nack(hostname=host, position=position, reason=reason)
