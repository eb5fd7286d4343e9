"""Locust scenarios for the translation service: a realistic request mix, load shapes and an SLO gate.

    LOADTEST_SHAPE=step locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 24 -t 180s --csv out/x --csv-full-history --html out/x.html [--slo-scale 2]

(`python -m loadtests.run` starts the service, runs this and writes a report.)

- Users send the mix of loadtests/mix.py, named by request type (phrase, sentence, list, document,
  libre, invalid, languages) so Locust's stats are per type. An invalid request succeeds when it
  gets the status the API documents for it (422, 404) and fails otherwise.
- LOADTEST_SHAPE selects a load shape of loadtests/shapes.py (steady, step, spike; unset or
  "none": Locust's own -u/-r). Shapes scale to -u (peak users) and -t (run time).
- At the end the SLO of loadtests/slo.py is checked (failure ratio, p50/p99 per type); the process
  exits 1 when it is breached, 2 when the scenario itself raised. Limits: --slo-fail-ratio,
  --slo-p50/--slo-p99 "type=ms,...", --slo-scale; the verdict also goes to <csv prefix>_slo.json.
- Every run is bounded: a headless run without -t stops after 60 s (LOADTEST_RUN_TIME_DEFAULT).
  Traffic goes to loopback hosts only unless LOADTEST_ALLOW_REMOTE=1.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from urllib.parse import urlsplit

from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.runners import WorkerRunner

from loadtests import shapes
from loadtests.mix import MIX, Corpus
from loadtests.slo import SLO, TypeStats

DEFAULT_RUN_TIME_S = int(os.environ.get("LOADTEST_RUN_TIME_DEFAULT", "60"))  # a headless run without -t
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CORPUS = Corpus()
_seeds = itertools.count(int(os.environ.get("LOADTEST_SEED", "0")) * 1_000_003)
NAMES = list(MIX)
WEIGHTS = [MIX[name][0] for name in NAMES]
logger = logging.getLogger("loadtests")


class TranslationUser(FastHttpUser):
    """A client of the service: a request of the mix, then 0.2 to 1 s of think time.

    Each user's first requests are one of every type (in a random order), so that even a short run
    has stats for all of them; then types are drawn by their weights in loadtests/mix.py."""

    wait_time = between(float(os.environ.get("LOADTEST_WAIT_MIN", "0.2")),
                        float(os.environ.get("LOADTEST_WAIT_MAX", "1.0")))
    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random(next(_seeds))
        self.tour = list(MIX)
        self.rng.shuffle(self.tour)

    @task
    def send(self) -> None:
        name = self.tour.pop() if self.tour else self.rng.choices(NAMES, WEIGHTS)[0]
        call = MIX[name][1](CORPUS, self.rng)
        with self.client.request(call.method, call.path, name=call.name, json=call.json, data=call.data,
                                 headers=call.headers or None, catch_response=True) as resp:
            if not resp.status_code:
                resp.failure(f"no answer: {type(resp.error).__name__ if resp.error else 'connection failed'}")
                return
            problem = call.check(resp.status_code, resp.text or "")
            if problem is None:
                resp.success()
            else:
                resp.failure(problem)


# -- the load shape, chosen by LOADTEST_SHAPE -------------------------------------------------------
def _shape_class(name: str) -> type[LoadTestShape] | None:
    if name in ("", "none"):
        return None
    if name not in shapes.SHAPES:
        raise SystemExit(f"LOADTEST_SHAPE must be one of {sorted(shapes.SHAPES)} or none. Given: {name!r}")
    schedule = shapes.SHAPES[name]

    def tick(self: LoadTestShape) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        users = getattr(options, "num_users", None) or 1
        run_time = getattr(options, "run_time", None) or DEFAULT_RUN_TIME_S
        return shapes.tick(schedule, self.get_run_time(), int(users), float(run_time))

    # use_common_options: -u and -t belong to the shape (peak users, run time).
    return type(f"{name.title()}Shape", (LoadTestShape,), {"tick": tick, "use_common_options": True,
                                                           "__doc__": schedule.__doc__})


Shape = _shape_class(os.environ.get("LOADTEST_SHAPE", "").strip().lower())  # Locust runs the one it finds
if Shape is None:
    del Shape


# -- options, bounds and the SLO gate ----------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("SLO (loadtests/slo.py)")
    group.add_argument("--slo-fail-ratio", type=float, default=None, env_var="LOCUST_SLO_FAIL_RATIO",
                       help="most unexpected answers, as a share of all requests (default 0.01)")
    group.add_argument("--slo-p50", default="", env_var="LOCUST_SLO_P50", help='"type=ms,..." over the defaults')
    group.add_argument("--slo-p99", default="", env_var="LOCUST_SLO_P99", help='"type=ms,..." over the defaults')
    group.add_argument("--slo-scale", type=float, default=1.0, env_var="LOCUST_SLO_SCALE",
                       help="multiply every latency limit (a slower machine, a smoke run)")
    group.add_argument("--slo-report", default="", env_var="LOCUST_SLO_REPORT",
                       help="write the verdict as JSON here (default: <csv prefix>_slo.json with --csv)")


def slo_of(options) -> SLO:
    return SLO.from_options(fail_ratio=getattr(options, "slo_fail_ratio", None), p50=getattr(options, "slo_p50", ""),
                            p99=getattr(options, "slo_p99", ""), scale=getattr(options, "slo_scale", 1.0) or 1.0)


@events.init.add_listener
def _bounds(environment, **_kw) -> None:
    options = environment.parsed_options
    if options is None:
        return
    host = urlsplit(options.host or environment.host or "").hostname
    if host and host not in LOOPBACK and os.environ.get("LOADTEST_ALLOW_REMOTE") != "1":
        raise SystemExit(f"load only goes to a loopback host here (127.0.0.1). Given: {host!r}; "
                         "set LOADTEST_ALLOW_REMOTE=1 to load another machine")
    if options.headless and not options.run_time:
        logger.warning("no --run-time given: stopping after %d s", DEFAULT_RUN_TIME_S)
        options.run_time = DEFAULT_RUN_TIME_S
    slo_of(options)  # bad limits stop the run before it starts


@events.quitting.add_listener
def _slo_gate(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    slo = slo_of(options)
    by_name: dict[str, list] = {}
    for entry in environment.stats.entries.values():
        by_name.setdefault(entry.name, []).append(entry)
    types = []
    for name, entries in by_name.items():
        entry = entries[0] if len(entries) == 1 else _merged(entries)
        types.append(_type_stats(name, entry))
    verdict = slo.check(types, _type_stats("Aggregated", environment.stats.total))
    exceptions = len(environment.runner.exceptions) if environment.runner else 0
    print("\nSLO check\n" + verdict.table())
    for breach in verdict.breaches:
        print(f"SLO BREACH: {breach}")
    if exceptions:
        print(f"the scenario raised {exceptions} distinct exception(s): see the log / <csv prefix>_exceptions.csv")
    print("SLO " + ("met" if verdict.ok else "NOT met"))
    report = options.slo_report or (f"{options.csv_prefix}_slo.json" if options.csv_prefix else "")
    if report:
        with open(report, "w") as f:
            json.dump({"ok": verdict.ok, "breaches": verdict.breaches, "rows": verdict.rows, "slo": slo.as_dict(),
                       "exceptions": exceptions}, f, indent=2)
    environment.process_exit_code = 1 if not verdict.ok else 2 if exceptions else 0


def _merged(entries):
    from locust.stats import StatsEntry

    merged = StatsEntry(entries[0].stats, entries[0].name, "")
    for e in entries:
        merged.extend(e)
    return merged


def _type_stats(name: str, entry) -> TypeStats:
    done = entry.num_requests - entry.num_none_requests
    return TypeStats(name, entry.num_requests, entry.num_failures,
                     float(entry.get_response_time_percentile(0.5)) if done else None,
                     float(entry.get_response_time_percentile(0.99)) if done else None)
