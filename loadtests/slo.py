"""Service-level objectives of a load run: failure ratio and p50/p99 latency per request type.

Plain Python (no Locust), so the same check runs at the end of a Locust run (locustfile.py), over
the windows of a finished run's history (report.py) and in unit tests.

Defaults are for this project's reference machine: 2 CPU cores, the embedded model, Locust on
the same cores. Override them per run: `--slo-fail-ratio 0`, `--slo-p99 document=20000,phrase=2000`,
`--slo-scale 3` (every latency limit x3), or the same as LOCUST_SLO_* environment variables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

# Milliseconds. Interactive requests (one phrase or sentence) must stay interactive; batches and
# documents carry 2 to 24 sentences each, so they may take longer. Invalid requests and
# /languages never reach the model: only the proxy and ingress, which share the cores under load.
DEFAULT_P50_MS = {"phrase": 500, "sentence": 1000, "libre": 1000, "list": 3000, "document": 5000,
                  "invalid": 250, "languages": 250}
DEFAULT_P99_MS = {"phrase": 3000, "sentence": 5000, "libre": 5000, "list": 10000, "document": 15000,
                  "invalid": 2000, "languages": 2000}
DEFAULT_FAIL_RATIO = 0.01  # unexpected answers (a wrong status, a broken body, no answer) of all requests


@dataclass(frozen=True)
class TypeStats:
    """What the check needs to know about one request type (or the whole run: name "Aggregated")."""

    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    breaches: list[str]
    rows: list[dict]  # one per type: name, requests, failures, p50/p99 and their limits, ok

    def table(self) -> str:
        """A plain-text table for the terminal."""
        lines = [f"{'type':<10} {'reqs':>7} {'fails':>6} {'p50 ms':>8} {'limit':>7} {'p99 ms':>8} {'limit':>7}  ok"]
        for r in self.rows:
            lines.append(f"{r['name']:<10} {r['requests']:>7} {r['failures']:>6} {_ms(r['p50_ms']):>8} "
                         f"{_ms(r['p50_limit_ms']):>7} {_ms(r['p99_ms']):>8} {_ms(r['p99_limit_ms']):>7}  "
                         f"{'yes' if r['ok'] else 'NO'}")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass(frozen=True)
class SLO:
    max_fail_ratio: float = DEFAULT_FAIL_RATIO
    p50_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_P50_MS))
    p99_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_P99_MS))

    @classmethod
    def from_options(cls, fail_ratio: float | None = None, p50: str | None = None, p99: str | None = None,
                     scale: float = 1.0) -> SLO:
        """From command-line strings: p50/p99 as "type=ms,type=ms" overriding the defaults."""
        slo = cls()
        p50_ms = {**slo.p50_ms, **parse_limits(p50)}
        p99_ms = {**slo.p99_ms, **parse_limits(p99)}
        if scale <= 0:
            raise ValueError(f"--slo-scale must be > 0. Given: {scale}")
        return replace(slo, max_fail_ratio=slo.max_fail_ratio if fail_ratio is None else fail_ratio,
                       p50_ms={k: v * scale for k, v in p50_ms.items()},
                       p99_ms={k: v * scale for k, v in p99_ms.items()})

    def as_dict(self) -> dict:
        return {"max_fail_ratio": self.max_fail_ratio, "p50_ms": dict(self.p50_ms), "p99_ms": dict(self.p99_ms)}

    def check(self, types: Iterable[TypeStats], total: TypeStats) -> Verdict:
        """The run's verdict: the failure ratio of all requests, then each type's p50 and p99.

        A type without a limit is reported but not judged; a run without requests fails."""
        breaches, rows = [], []
        if total.requests == 0:
            breaches.append("no requests were made")
        elif total.failures / total.requests > self.max_fail_ratio:
            breaches.append(f"failure ratio {total.failures / total.requests:.4f} > {self.max_fail_ratio} "
                            f"({total.failures} of {total.requests} requests)")
        for t in sorted(types, key=lambda t: t.name):
            p50_limit, p99_limit = self.p50_ms.get(t.name), self.p99_ms.get(t.name)
            ok = True
            for label, value, limit in (("p50", t.p50_ms, p50_limit), ("p99", t.p99_ms, p99_limit)):
                if value is not None and limit is not None and value > limit:
                    breaches.append(f"{t.name}: {label} {value:.0f} ms > {limit:.0f} ms")
                    ok = False
            rows.append({"name": t.name, "requests": t.requests, "failures": t.failures, "p50_ms": t.p50_ms,
                         "p99_ms": t.p99_ms, "p50_limit_ms": p50_limit, "p99_limit_ms": p99_limit, "ok": ok})
        rows.append({"name": "all", "requests": total.requests, "failures": total.failures, "p50_ms": total.p50_ms,
                     "p99_ms": total.p99_ms, "p50_limit_ms": None, "p99_limit_ms": None,
                     "ok": not any(b.startswith(("failure ratio", "no requests")) for b in breaches)})
        return Verdict(ok=not breaches, breaches=breaches, rows=rows)


def parse_limits(spec: str | None) -> dict[str, float]:
    """"phrase=800,document=20000" -> {"phrase": 800.0, "document": 20000.0} (milliseconds)."""
    limits: dict[str, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            limits[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"a latency limit must be TYPE=MILLISECONDS. Given: {part!r}") from None
    return limits
