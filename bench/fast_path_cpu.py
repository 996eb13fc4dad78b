"""CPU per AddDomain in the gateway's fast-path logic, in one process, without I/O.

The whole-path benchmarks swing by a third with the machine's speed, so a change of a few
microseconds a command in the gateway is lost in them. This runs the same AddDomain
commands, in batches of 32 as the group commit forms them, through
- `CommandHandler.submit_known` / `finish_known` (what the real gateway's message callback
  and settling do: decide on cached or pending states, hand the request to the group
  commit, settle the append, build the reply), the committer replaced by a list of futures;
- `bench/lean_gateway.decide_one` and `reply_to` (the least a gateway can do for it),
and prints the time per command of each: the handler's own cost above the lean loop, free
of NATS, PostgreSQL and the machine's drift (both are measured in the same seconds,
alternated). Sealing, packing and the append are the same code for both and left out.

    .venv/bin/python bench/fast_path_cpu.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lean_gateway import decide_one, reply_to
from events.app import CreateApp
from events.codec import COMMAND_DECODER, CommandEnvelope, encode
from events.domain import AddDomain
from services.domain import app as app_aggregate
from services.domain.app import AppState
from services.domain.ids import TimeOrderedIds
from services.domain.streams import app_stream
from services.gateway.handler import CommandHandler
from services.runner import tune_gc
from services.storage.event_log import AppendRequest, AppendResult, AppendStatus
from services.telemetry import new_traceparent

APPS = 64
BATCH = 32
COMMANDS = BATCH * 400
_command_id = TimeOrderedIds(random.SystemRandom())


class _Committer:
    """The group commit's `submit`, keeping the requests for the caller to settle."""

    def __init__(self) -> None:
        self.submitted: list[asyncio.Future[AppendResult]] = []

    def submit(self, request: AppendRequest, requires: object = ()) -> asyncio.Future[AppendResult]:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.submitted.append(future)
        return future


def _created_apps() -> dict[str, tuple[int, AppState]]:
    now = dt.datetime.now(dt.UTC)
    states = {}
    for a in range(APPS):
        empty = AppState(name=f"w{a:05d}")
        created = app_aggregate.decide(empty, {}, CreateApp(app=empty.name), now=now, seed="x")
        states[app_stream(empty.name)] = (1, app_aggregate.evolve(empty, created.events[0][1]))
    return states


def _commands(first: int) -> list[bytes]:
    """AddDomain envelopes as a client sends them, round-robin over the apps."""
    out = []
    for k in range(COMMANDS):
        app = f"w{k % APPS:05d}"
        command = AddDomain(app=app, hostname=f"h{first + k}.{app}.bench.example")
        out.append(encode(CommandEnvelope(id=_command_id(), actor="bench", command=command)))
    return out


def _appended(requests: list[AppendRequest], position: int) -> list[AppendResult]:
    """What the log answers for requests that all go in (positions from `position`)."""
    results = []
    for r in requests:
        n = len(r.events)
        versions = [v + 1 for v in r.expected.values()][:n]
        results.append(AppendResult(AppendStatus.OK, list(range(position, position + n)), versions))
        position += n
    return results


async def handler_path(commands: list[bytes]) -> float:
    """Seconds for `commands` through the real handler's fast path."""
    committer = _Committer()
    handler = CommandHandler(None, committer, None)  # type: ignore[arg-type]
    for stream, (version, state) in _created_apps().items():
        handler._cache.put(stream, version, state)
    started = time.perf_counter()
    position = 1
    for i in range(0, len(commands), BATCH):
        steps = []
        for data in commands[i : i + BATCH]:
            step = handler.submit_known(COMMAND_DECODER.decode(data), new_traceparent())
            assert step is not None, "left to the slow path"
            steps.append(step)
        results = _appended([s[0] for s in steps], position)
        position += sum(len(s[0].events) for s in steps)
        for future, result in zip(committer.submitted, results, strict=True):
            future.set_result(result)
        committer.submitted.clear()
        for step in steps:
            encode(handler.finish_known(step))
    return time.perf_counter() - started


async def lean_path(commands: list[bytes]) -> float:
    """Seconds for `commands` through the lean loop's decide and reply."""
    cache: dict[str, tuple[int, Any]] = dict(_created_apps())
    ids = random.Random()
    started = time.perf_counter()
    position = 1
    for i in range(0, len(commands), BATCH):
        now = dt.datetime.now(dt.UTC)
        decided = [decide_one(data, cache, ids, now) for data in commands[i : i + BATCH]]
        results = _appended([d[0] for d in decided], position)
        position += sum(len(d[0].events) for d in decided)
        for (_, decision, app, version), result in zip(decided, results, strict=True):
            encode(reply_to(decision, app, version, result))
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    tune_gc()
    paths: dict[str, Callable[[list[bytes]], Any]] = {
        "certplane handler (submit_known, finish_known)": handler_path,
        "lean loop (decide_one, reply_to)": lean_path,
    }
    seconds = dict.fromkeys(paths, 0.0)
    for r in range(opts.rounds):
        for name, path in paths.items():
            seconds[name] += await path(_commands(r * COMMANDS))
    n = opts.rounds * COMMANDS
    for name, total in seconds.items():
        print(f"{name}: {total / n * 1e6:.1f} µs a command ({n:,} AddDomain)")


if __name__ == "__main__":
    asyncio.run(main())
