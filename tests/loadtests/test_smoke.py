"""CI's smoke load: Locust headless for 20 s against the real service (Ray Serve, HTTP) serving the
shipped embedded model, deployed as a second application of the session's Serve instance.

Every request goes the whole way: proxy, ingress, validation, batching, encoder, decoder. Latency
limits are the defaults x4 (this machine is small and shared, and Locust runs on the same cores);
the failure ratio limit is 0: one unexpected answer fails CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests.mix import MIX
from loadtests.report import read_stats, summary
from loadtests.slo import SLO

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SMOKE_SLO = ["--slo-fail-ratio", "0", "--slo-scale", "4"]


def locust(url: str, prefix: Path, seconds: int, users: int, shape: str = "steady", extra: list[str] = ()
           ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users),
           "-t", f"{seconds}s", "--stop-timeout", "10", "--csv", str(prefix), "--csv-full-history",
           "--html", f"{prefix}.html", "--only-summary", "--loglevel", "WARNING", *extra]
    env = {**os.environ, "LOADTEST_SHAPE": shape, "PYTHONPATH": str(ROOT)}
    # The shape and -t end the run; the timeout is a backstop only.
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120)


@pytest.fixture(scope="module")
def embedded(service):
    """The shipped model behind the real app, at {service.url}/embedded."""
    from ray import serve

    from model.translator import EMBEDDED_MODEL
    from service.app import AppArgs, ModelSpec, build_app

    spec = ModelSpec(name="embedded", path=str(EMBEDDED_MODEL), pairs=["en-de", "de-en"], num_cpus=1, threads=1)
    serve.run(build_app(AppArgs(models=[spec])), name="embedded", route_prefix="/embedded")
    yield service.url + "/embedded"
    serve.delete("embedded")


@pytest.fixture(scope="module")
def smoke(embedded, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    run = locust(embedded, out / "locust", seconds=20, users=6, extra=SMOKE_SLO)
    return out, run


def test_the_smoke_target_translates_with_the_shipped_model(embedded):
    from tests.model.test_embedded import GOLDEN

    src, target, ref = GOLDEN[0]
    source = "en" if target == "de" else "de"
    r = httpx.post(embedded + "/v1/translate", json={"text": src, "source_lang": source, "target_lang": target},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["translations"][0]["text"] == ref


def test_smoke_load_meets_the_slo(smoke):
    out, run = smoke
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "SLO met" in run.stdout
    stats = read_stats(out / "locust_stats.csv")
    by_name = {t.name: t for t in stats}
    assert set(MIX) <= {name for name, t in by_name.items() if t.requests > 0}, by_name  # every request type
    assert by_name["Aggregated"].failures == 0 and by_name["Aggregated"].requests >= 50


def test_smoke_report(smoke):
    out, _ = smoke
    slo = SLO.from_options(fail_ratio=0, scale=4)
    text = summary(out, "locust", slo, title="smoke")
    assert "SLO **met**" in text and "## Peak sustained throughput at the SLO" in text
    assert "requests/s** (" in text  # a plateau in which the SLO held
    for f in ("over_time.png", "vs_users.png", "locust.html", "locust_stats_history.csv", "locust_slo.json"):
        assert (out / f).stat().st_size > 0, f
