"""Bundle validation in worker processes, so one gateway uses more than one core.

Validating an uploaded bundle (unseal, parse, path-validate, re-encrypt) is CPU-bound
Python and C, about 0.8 ms, and it ran on the gateway's event loop: AddCert was bounded by
one core while the other sat idle. More gateways in the queue group would use the other
cores too, but each then holds fewer commands per group commit (measured: batches of 23
became 5, and PostgreSQL's CPU per command tripled). So a gateway hands bundles to a few
worker processes and keeps deciding and group-committing on its loop.

A worker is `python -m services.gateway.bundle_workers FD`, talking over a socketpair in
length-prefixed msgpack frames. It gets the master key and the trusted roots in its first
frame (not on its command line or in its environment) and holds exactly the custody the
gateway holds; what comes back is what `KeyCustody.prepare` returns: facts, the chain, the
key encrypted under a fresh data key and that data key wrapped. No clear key crosses the
socket: the key arrives sealed to the gateway's transport key and leaves encrypted.

Workers start on the first bundle, not with the gateway: most gateways of a test run, and
gateways that only ever see small commands, never pay for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import serialization

from events.endpoint import CertificateFacts, EncryptedKey, SealedKey
from services.domain.app import PreparedCert
from services.domain.errors import CertplaneError, Rejected
from services.domain.key_envelope import MasterKey
from services.domain.x509_bundle import TrustStore
from services.gateway.key_custody import KeyCustody, PreparedUpload
from services.storage.event_log import NewDataKey

log = logging.getLogger("certplane.gateway.bundle_workers")

_LENGTH = struct.Struct(">I")
_REPO = Path(__file__).resolve().parents[2]  # where `services` is importable from


class _Init(msgspec.Struct, tag="init"):
    master_secret: bytes
    roots: list[bytes]  # DER


class _Job(msgspec.Struct, tag="job"):
    id: int
    certificates: list[bytes]
    key: SealedKey
    now: dt.datetime


class _Prepared(msgspec.Struct, tag="prepared"):
    id: int
    facts: CertificateFacts
    chain_pem: str
    key: EncryptedKey
    data_key_id: str
    master_key_id: str
    wrapped: bytes


class _Refused(msgspec.Struct, tag="refused"):
    id: int
    code: str
    message: str
    details: dict[str, str]


class _Failed(msgspec.Struct, tag="failed"):
    """The worker raised something other than a refusal (a bug): the command fails, loudly."""

    id: int
    error: str


_ENCODER = msgspec.msgpack.Encoder()
_TO_WORKER = msgspec.msgpack.Decoder(_Init | _Job)
_FROM_WORKER = msgspec.msgpack.Decoder(_Prepared | _Refused | _Failed)


class WorkerLost(CertplaneError):
    """A worker died with this bundle in hand; nothing was appended, the command may be retried."""


def default_count() -> int:
    """One worker per core, at most four; none on a single core (nothing to gain there).

    Measured on 2 vCPUs, AddCert (EC) with 64 clients: in the gateway process 750/s, one
    worker 1,000/s, two workers 1,300/s (bench/cpu_per_command.py; bench/RESULTS.md).
    """
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(4, cores)


class BundleWorkers:
    """`await workers.prepare(...)`: `KeyCustody.prepare` on a worker (in-process with 0)."""

    def __init__(self, custody: KeyCustody, master: MasterKey, count: int) -> None:
        self._custody = custody
        self._init = _ENCODER.encode(
            _Init(
                master_secret=master.secret,
                roots=[r.public_bytes(serialization.Encoding.DER) for r in custody.trust.roots],
            )
        )
        self._count = count
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._closed = False
        self.in_flight = 0  # bundles on a worker now: their commands will append soon

    async def prepare(
        self, certificates: list[bytes], sealed: SealedKey, now: dt.datetime
    ) -> PreparedUpload:
        """Unseal, validate and re-encrypt; raises `Rejected` on a bad bundle."""
        if self._count == 0:
            return self._custody.prepare(certificates, sealed, now)
        await self._ensure_started()
        worker = min(self._workers, key=_Worker.load)  # the least busy
        job = _Job(id=next(self._ids), certificates=certificates, key=sealed, now=now)
        self.in_flight += 1
        try:
            try:
                outcome = await worker.run(job)
            except WorkerLost:
                # Validation is pure: run it again on a fresh worker. A bundle that kills
                # workers itself fails the second time too, and the command fails.
                await self._ensure_started()
                outcome = await min(self._workers, key=_Worker.load).run(job)
        finally:
            self.in_flight -= 1
        if isinstance(outcome, _Refused):
            raise Rejected(outcome.code, outcome.message, **outcome.details)
        if isinstance(outcome, _Failed):
            raise RuntimeError(f"bundle worker failed: {outcome.error}")
        return PreparedUpload(
            cert=PreparedCert(facts=outcome.facts, chain_pem=outcome.chain_pem, key=outcome.key),
            new_key=NewDataKey(outcome.data_key_id, outcome.master_key_id, outcome.wrapped),
        )

    async def _ensure_started(self) -> None:
        if self._closed:
            raise WorkerLost("the gateway is shutting down: send the command again")
        if len(self._workers) == self._count and all(w.alive for w in self._workers):
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start_missing())
        await asyncio.shield(self._starting)

    async def _start_missing(self) -> None:
        self._workers = [w for w in self._workers if w.alive]
        while len(self._workers) < self._count:
            self._workers.append(await _Worker.spawn(self._init))
        log.info("%d bundle worker(s) running", len(self._workers))

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        await asyncio.gather(*(w.stop() for w in self._workers))
        self._workers = []


class _Worker:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._process = process
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[_Prepared | _Refused | _Failed]] = {}
        self._reading = asyncio.create_task(self._read_replies())
        self.alive = True

    @classmethod
    async def spawn(cls, init: bytes) -> _Worker:
        parent, child = socket.socketpair()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.gateway.bundle_workers",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                env=env,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        writer.write(_LENGTH.pack(len(init)) + init)
        return cls(process, reader, writer)

    @property
    def pid(self) -> int:
        return self._process.pid

    def load(self) -> int:
        return len(self._pending)

    async def run(self, job: _Job) -> _Prepared | _Refused | _Failed:
        if not self.alive:
            raise WorkerLost("the bundle worker stopped: send the command again")
        future: asyncio.Future[_Prepared | _Refused | _Failed] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[job.id] = future
        frame = _ENCODER.encode(job)
        self._writer.write(_LENGTH.pack(len(frame)) + frame)
        try:
            return await future
        finally:
            self._pending.pop(job.id, None)

    async def _read_replies(self) -> None:
        try:
            while True:
                size = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))[0]
                outcome = _FROM_WORKER.decode(await self._reader.readexactly(size))
                future = self._pending.get(outcome.id)
                if future is not None and not future.done():
                    future.set_result(outcome)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker exited or was killed
        except Exception:  # a reply that does not decode: the stream cannot be trusted
            log.exception("bundle worker %d sent an unreadable reply; replacing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        finally:
            self.alive = False
            lost = WorkerLost(
                "the bundle worker validating this certificate stopped; nothing was appended: "
                "send the command again"
            )
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(lost)
            self._writer.close()
            code = await self._process.wait()
            if code not in (0, -15):
                log.error("bundle worker %d exited with %s", self.pid, code)

    async def stop(self) -> None:
        self._writer.close()  # the worker exits at end of input
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._process.wait(), 5)
        if self._process.returncode is None:
            self._process.kill()
        with contextlib.suppress(Exception):
            await self._reading


def _serve(sock: socket.socket) -> None:
    """The worker: read jobs until the gateway closes the socket."""
    stream = sock.makefile("rb")

    def read_frame() -> bytes | None:
        header = stream.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            return None
        return stream.read(_LENGTH.unpack(header)[0])

    first = read_frame()
    if first is None:
        return
    init = _TO_WORKER.decode(first)
    assert isinstance(init, _Init)
    master = MasterKey(init.master_secret)
    trust = TrustStore.from_der(init.roots)
    custody = KeyCustody(master, trust)
    while (frame := read_frame()) is not None:
        job = _TO_WORKER.decode(frame)
        assert isinstance(job, _Job)
        outcome: _Prepared | _Refused | _Failed
        try:
            prepared = custody.prepare(job.certificates, job.key, job.now)
            outcome = _Prepared(
                id=job.id,
                facts=prepared.cert.facts,
                chain_pem=prepared.cert.chain_pem,
                key=prepared.cert.key,
                data_key_id=prepared.new_key.key_id,
                master_key_id=prepared.new_key.master_key_id,
                wrapped=prepared.new_key.wrapped,
            )
        except Rejected as e:
            outcome = _Refused(id=job.id, code=e.code, message=e.message, details=e.details)
        except Exception as e:  # never the key: exceptions here name types, not values
            log.exception("bundle worker failed on job %d", job.id)
            outcome = _Failed(id=job.id, error=type(e).__name__)
        reply = _ENCODER.encode(outcome)
        sock.sendall(_LENGTH.pack(len(reply)) + reply)


def main() -> None:
    from services.runner import setup_logging, tune_gc

    # Ctrl-C reaches the whole process group: the gateway stops its workers by closing
    # their sockets, so a worker must not die first with jobs in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging("certplane-gateway-worker")
    tune_gc()
    _serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
