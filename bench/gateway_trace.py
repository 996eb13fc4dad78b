"""The real gateway, timed from inside: where an append's time goes and how long the event
loop's turns are. An instrument, not a gateway variant: it wraps three functions of the
product and changes nothing they do.

    .venv/bin/python bench/cpu_per_command.py --gateway-command bench/gateway_trace.py

When the gateway stops, it writes one line to the file named by CERTPLANE_TRACE_OUT
(`cpu_per_command.py` prints it), over the middle half of the run's batches:
- how much of the wall an append is in flight, and an append's mean wall time as the
  gateway sees it (packing the batch included), with the packing's share;
- the gateway's CPU during appends and between them (what it does while the log works);
- how many requests wait when an append returns (the next batch forms from them);
- the event loop's turns: percentiles, and the share of loop time spent in long turns (a
  burst of commands decided in one turn delays everything else that became ready);
- from an append's return to the first reply sent for its batch;
- how often, and how long, the committer waited for commands to form its next batch (the
  log idles meanwhile: the ring's other half, replies to decisions, was the longer one).

Session 20 used it (bench/RESULTS.md): an append of 32 in flight 80-84 % of the wall, loop
turns p90 1.1 ms, 1.1 ms from an append's answer to its first reply.
"""

from __future__ import annotations

import asyncio.base_events
import atexit
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.gateway import group_commit, service
from services.storage import event_log

_batches: list[tuple[float, float, int, float, float, int]] = []
_pack = [0.0]
_turns: list[float] = []
_reply_delays: list[float] = []
_returned: list[float] = []  # when the last append returned, until its first reply
_committers: list[group_commit.GroupCommitter] = []
_takes: list[float] = []  # how long the committer waited for its next batch


def _timed_pack(original: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _pack[0] += time.perf_counter() - started

    return timed


event_log._batch_arrays = _timed_pack(event_log._batch_arrays)
event_log._packed = _timed_pack(event_log._packed)

_append_batch = event_log.PostgresEventLog.append_batch


async def _traced_append(self: Any, requests: Any, requires: Any = None) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return await _append_batch(self, requests, requires)
    finally:
        now = time.perf_counter()
        waiting = len(_committers[0]._waiting) if _committers else 0
        _batches.append((wall, now, len(requests), cpu, time.process_time(), waiting))
        _returned[:] = [now]


event_log.PostgresEventLog.append_batch = _traced_append  # type: ignore[method-assign]

_committer_init = group_commit.GroupCommitter.__init__


def _remember_committer(self: Any, *args: Any, **kwargs: Any) -> None:
    _committer_init(self, *args, **kwargs)
    _committers.append(self)


group_commit.GroupCommitter.__init__ = _remember_committer  # type: ignore[method-assign]

_next_batch = group_commit.GroupCommitter._next_batch


async def _timed_next_batch(self: Any, index: int) -> Any:
    started = time.perf_counter()
    try:
        return await _next_batch(self, index)
    finally:
        _takes.append(time.perf_counter() - started)


group_commit.GroupCommitter._next_batch = _timed_next_batch  # type: ignore[method-assign]

_respond = service.Gateway._respond


async def _traced_respond(self: Any, msg: Any, reply: object) -> None:
    if _returned:
        _reply_delays.append(time.perf_counter() - _returned.pop())
    await _respond(self, msg, reply)


service.Gateway._respond = _traced_respond  # type: ignore[method-assign]

_run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]


def _timed_turn(self: Any) -> None:
    started = time.perf_counter()
    _run_once(self)
    _turns.append(time.perf_counter() - started)


asyncio.base_events.BaseEventLoop._run_once = _timed_turn  # type: ignore[attr-defined]


def _report() -> None:
    out = os.environ.get("CERTPLANE_TRACE_OUT")
    middle = _batches[len(_batches) // 4 : len(_batches) * 3 // 4]
    if not out or len(middle) < 10:
        return
    wall = middle[-1][1] - middle[0][0]
    in_flight = sum(end - start for start, end, *_ in middle)
    cpu_in = sum(c1 - c0 for _, _, _, c0, c1, _ in middle)
    cpu_all = middle[-1][4] - middle[0][3]
    commands = sum(b[2] for b in middle)
    turns = sorted(_turns[len(_turns) // 4 : len(_turns) * 3 // 4])
    total = sum(turns) or 1.0

    def pct(q: float) -> float:
        return turns[min(len(turns) - 1, int(q * len(turns)))] * 1e6

    def longer(seconds: float) -> float:
        return sum(t for t in turns if t > seconds) / total

    delays = _reply_delays[len(_reply_delays) // 4 : len(_reply_delays) * 3 // 4] or [0.0]
    takes = _takes[len(_takes) // 4 : len(_takes) * 3 // 4] or [0.0]
    waited = [t for t in takes if t > 50e-6] or [0.0]
    Path(out).write_text(
        f"appends: {len(middle)} of {commands / len(middle):.1f} commands, in flight"
        f" {in_flight / wall:.0%} of the wall, {in_flight / len(middle) * 1e3:.2f} ms each"
        f" (packing {_pack[0] / len(_batches) * 1e3:.2f} ms); gateway CPU {cpu_all / wall:.0%}"
        f" of the wall, {cpu_in / in_flight:.0%} during appends,"
        f" {(cpu_all - cpu_in) / max(wall - in_flight, 1e-9):.0%} between; waiting when one"
        f" returns {sum(b[5] for b in middle) / len(middle):.1f}; loop turns p50 {pct(0.5):.0f}"
        f" p90 {pct(0.9):.0f} p99 {pct(0.99):.0f} µs, {longer(1e-3):.0%} of loop time in turns"
        f" over 1 ms; append return to first reply {sum(delays) / len(delays) * 1e3:.2f} ms;"
        f" the next batch had to be waited for after {len(waited) / len(takes):.0%} of the"
        f" appends, {sum(waited) / len(waited) * 1e3:.2f} ms on average\n"
    )


atexit.register(_report)

if __name__ == "__main__":
    from services.cli.main import main

    sys.argv = ["certplane", "gateway"]
    main()
