"""Bundle workers: the gateway's bundle validation in other processes, same answers, no losses."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from events.endpoint import SealedKey
from services.devcerts import DevCA
from services.domain.errors import Rejected
from services.domain.key_envelope import DataKey, MasterKey, seal_for_gateway
from services.domain.x509_bundle import TrustStore
from services.gateway.bundle_workers import BundleWorkers, WorkerLost, _Job, _Worker
from services.gateway.key_custody import KeyCustody

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("workers")


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def custody(ca: DevCA, master: MasterKey) -> KeyCustody:
    return KeyCustody(master, TrustStore([ca.root.cert]))


def worker_pids() -> list[int]:
    """This test process's bundle workers."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"bundle_workers" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.parametrize("count", [0, 2], ids=["in-process", "two-workers"])
async def test_workers_answer_exactly_as_the_gateway_process_does(
    ca: DevCA, custody: KeyCustody, master: MasterKey, count: int
) -> None:
    leaf = ca.leaf("www.shop.test", key_kind="rsa2048")
    other = ca.leaf("www.other.test")
    workers = BundleWorkers(custody, master, count)
    try:
        sealed = seal_for_gateway(leaf.key_pem, custody.public_key)
        chain = [ca.intermediate.cert_pem, leaf.cert_pem]  # out of order on purpose
        prepared = await workers.prepare(chain, sealed, NOW)
        expected = custody.prepare(chain, sealed, NOW)
        assert prepared.cert.facts == expected.cert.facts
        assert prepared.cert.facts.trusted and prepared.cert.facts.sans == ["www.shop.test"]
        assert prepared.cert.chain_pem == expected.cert.chain_pem
        # The key came back encrypted under a data key that the master key unwraps.
        data_key = DataKey.unwrap(prepared.new_key.key_id, prepared.new_key.wrapped, master)
        assert data_key.decrypt(prepared.cert.key).startswith(b"-----BEGIN PRIVATE KEY-----")

        wrong_key = seal_for_gateway(other.key_pem, custody.public_key)
        with pytest.raises(Rejected) as refused:
            await workers.prepare([leaf.cert_pem], wrong_key, NOW)
        assert refused.value.code == "key_mismatch"
        assert "does not match the certificate" in refused.value.message
        expired = NOW + dt.timedelta(days=3650)
        with pytest.raises(Rejected) as late:
            await workers.prepare(chain, sealed, expired)
        assert late.value.code == "cert_expired"
        assert len(worker_pids()) == count
    finally:
        await workers.close()
    assert worker_pids() == []


async def test_a_killed_worker_is_replaced_and_no_bundle_is_lost(
    ca: DevCA, custody: KeyCustody, master: MasterKey
) -> None:
    leaf = ca.leaf("www.shop.test")
    sealed = seal_for_gateway(leaf.key_pem, custody.public_key)
    chain = [leaf.cert_pem, ca.intermediate.cert_pem]
    workers = BundleWorkers(custody, master, 1)
    try:
        await workers.prepare(chain, sealed, NOW)
        (first,) = worker_pids()
        jobs = [asyncio.create_task(workers.prepare(chain, sealed, NOW)) for _ in range(200)]
        await asyncio.sleep(0.02)  # some done, most queued on the worker
        assert workers.in_flight > 100
        os.kill(first, signal.SIGKILL)
        results = await asyncio.gather(*jobs)
        assert all(r.cert.facts.trusted for r in results)
        (second,) = worker_pids()
        assert second != first
    finally:
        await workers.close()


async def test_a_worker_that_answers_garbage_is_killed_and_its_bundle_fails_cleanly() -> None:
    """Not a hang: the command fails with WorkerLost (the gateway answers bundle_worker_lost)."""
    parent, child = socket.socketpair()
    liar = (
        "import socket, sys, time\n"
        "s = socket.socket(fileno=int(sys.argv[1]))\n"
        "s.recv(1 << 20)\n"
        "s.sendall(b'\\x00\\x00\\x00\\x03abc')\n"
        "time.sleep(60)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", liar, str(child.fileno()), pass_fds=(child.fileno(),)
    )
    child.close()
    reader, writer = await asyncio.open_connection(sock=parent)
    worker = _Worker(process, reader, writer)
    job = _Job(
        id=1,
        certificates=[b"x"],
        key=SealedKey(gateway_key_id="k", ephemeral_public=b"e", nonce=b"n", ciphertext=b"c"),
        now=NOW,
    )
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(worker.run(job), 10)
    assert await asyncio.wait_for(process.wait(), 10) == -signal.SIGKILL
    assert not worker.alive
