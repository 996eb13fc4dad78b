"""What a domain event costs the app fold as the app grows, beside a dict-copy fold.

The gateway folds each accepted AddDomain into the app's cached state, and projections fold
every app event. A frozen state copied its domain dict per event: O(domains) a command, so
an app of 10,000 domains paid ~10,000 entry copies for each new one. `evolve` now keeps a
dict while small and a persistent map (`immutables.Map`) past `PERSISTENT_FROM`. The
baseline is the same `evolve` with that threshold out of reach (a dict copy per event, as
before), timed in this process on the same events: the figure is the ratio.

    .venv/bin/python bench/app_growth.py [--sizes 10,100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine
from events.app import AppCreated
from events.domain import DomainAdded
from services.domain import app as app_aggregate
from services.domain.app import AppState, evolve


def grown(size: int) -> AppState:
    state = evolve(AppState(name="big"), AppCreated(app="big"))
    for i in range(size):
        state = evolve(state, DomainAdded(app="big", hostname=f"h{i}.big.example"))
    return state


def per_event_us(size: int, events: list[DomainAdded], persistent_from: int) -> float:
    """Best mean µs to fold one more domain into an app of `size` (each from the same state)."""
    saved, app_aggregate.PERSISTENT_FROM = app_aggregate.PERSISTENT_FROM, persistent_from
    try:
        state, best = grown(size), float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for event in events:
                evolve(state, event)
            best = min(best, (time.perf_counter() - started) / len(events))
    finally:
        app_aggregate.PERSISTENT_FROM = saved
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000,10000,100000")
    opts = parser.parse_args()
    print(machine())
    print("Command: `.venv/bin/python bench/app_growth.py`\n")
    print("| domains in the app | dict copy per event | evolve per event | ratio |")
    print("|---|---|---|---|")
    for size in (int(s) for s in opts.sizes.split(",")):
        events = [DomainAdded(app="big", hostname=f"new{i}.big.example") for i in range(200)]
        copied = per_event_us(size, events, persistent_from=2**62)
        persistent = per_event_us(size, events, persistent_from=app_aggregate.PERSISTENT_FROM)
        print(
            f"| {size:,} | {copied:,.2f} µs | {persistent:,.2f} µs | {copied / persistent:,.1f}× |"
        )


if __name__ == "__main__":
    main()
