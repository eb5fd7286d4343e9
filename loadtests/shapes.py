"""Load shapes: how many users at which moment of a run. Each one ends by itself at the run time.

A shape scales to the run's peak users and run time (Locust's `-u` and `-t`): with
`LOADTEST_SHAPE=step`, `locust -f loadtests/locustfile.py --headless -u 24 -t 180s` ramps to 24 users
in 3 minutes (`-t` also stays a hard stop). Plain functions here, so they can be tested without
Locust (importing it monkey-patches the process); locustfile.py wraps them in LoadTestShape classes.

- steady: ramp up within ~5 s, then hold the peak: latency and throughput at one load.
- step:   `LOADTEST_STEPS` (default 6) equal plateaus, each 1/steps of the peak more users than the
          last: where the service saturates (throughput stops growing, p99 climbs, the SLO breaks).
- spike:  a fifth of the peak for 40% of the time, the full peak at once for 20%, then a fifth
          again: how the queues absorb a burst and how quickly latency recovers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# (seconds since start, peak users, run time) -> (users now, spawn rate per second)
Schedule = Callable[[float, int, float], tuple[int, float]]


def steady(now: float, users: int, run_time: float) -> tuple[int, float]:
    return users, max(1.0, users / 5)


def step(now: float, users: int, run_time: float, steps: int | None = None) -> tuple[int, float]:
    steps = max(1, steps or int(os.environ.get("LOADTEST_STEPS", "6")))
    k = min(steps - 1, int(now / (run_time / steps)))
    return max(1, round(users * (k + 1) / steps)), max(1.0, users / steps)


def spike(now: float, users: int, run_time: float) -> tuple[int, float]:
    if 0.4 * run_time <= now < 0.6 * run_time:
        return users, float(users)  # the whole burst arrives within a second
    return max(1, round(users / 5)), float(users)


SHAPES: dict[str, Schedule] = {"steady": steady, "step": step, "spike": spike}
# What `python -m loadtests.run --shape NAME` uses unless told otherwise: (peak users, seconds).
DEFAULTS: dict[str, tuple[int, int]] = {"steady": (8, 60), "step": (24, 180), "spike": (24, 90)}


def tick(schedule: Schedule, now: float, users: int, run_time: float) -> tuple[int, float] | None:
    """Locust's LoadTestShape.tick: None ends the run."""
    return None if now >= run_time else schedule(now, users, run_time)
