"""Alerts and dashboard: promtool accepts the rules and fires each alert in its unit tests, the chart
ships the same files, and every metric name they use is one the running service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml

from service.metrics import EXPORTED
from tests.deploy.conftest import CHART, REPO

RULES = REPO / "deploy/prometheus/rules.yaml"
RULES_TEST = REPO / "deploy/prometheus/rules.test.yaml"
PROMETHEUS_YML = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO / "deploy/grafana/mt-serve.json"
# deploy/ holds the canonical files; the chart cannot read outside its folder, so it has copies.
CHART_COPIES = {RULES: CHART / "files/prometheus-rules.yaml", DASHBOARD: CHART / "files/grafana-mt-serve.json"}
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    if not shutil.which(PROMTOOL):
        pytest.skip("promtool is missing (Debian's prometheus package: apt-get install prometheus; make sysdeps)")
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


# -- files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("canonical", CHART_COPIES, ids=lambda p: p.name)
def test_chart_copies_are_identical(canonical):
    copy = CHART_COPIES[canonical]
    assert copy.read_bytes() == canonical.read_bytes(), f"{copy} differs from {canonical}: run `make chart-files`"


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_fire_every_alert():
    result = promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert fired == alerts, f"alerts never fired in {RULES_TEST.name}: {alerts - fired}"
    assert silent == alerts, f"alerts never checked silent in {RULES_TEST.name}: {alerts - silent}"


def test_promtool_catches_a_broken_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n"
                   "        expr: sum(rate(ray_mt_requests_total[5m])\n")  # one parenthesis short
    assert promtool("check", "rules", bad).returncode != 0


def test_prometheus_config_is_valid():
    result = promtool("check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:8080"]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "mt-serve"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pair", "model"}


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query, with Grafana's variables filled in, checked by promtool as a recording rule."""
    exprs = [e for e in dashboard_exprs() if not e.startswith("label_values(")]
    filled = [e.replace("$__rate_interval", "5m").replace("$pair", ".*").replace("$model", ".*") for e in exprs]
    assert not [e for e in filled if "$" in e], "unknown Grafana variable"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(filled)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- metric names -------------------------------------------------------------------------------------
METRIC = re.compile(r"\bray_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def used_metric_names() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + dashboard_exprs()
    return {m for e in exprs for m in METRIC.findall(e)}


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_our_metric_names_are_defined_in_service_metrics():
    ours = {base_name(n) for n in used_metric_names() if n.startswith("ray_mt_")}
    assert ours, "the dashboard and rules use none of our metrics"
    assert ours <= set(EXPORTED.values()), ours - set(EXPORTED.values())


def ray_source_defines(name: str) -> bool:
    """Whether Ray's installed source defines the metric (Ray adds `ray_`, and `_total` to counters)."""
    bare = base_name(name).removeprefix("ray_")
    candidates = {bare, bare.removesuffix("_total")}
    root = Path(ray.__file__).parent / "serve"
    return any(f'"{c}"' in path.read_text(errors="ignore") for path in root.rglob("*.py") if "tests" not in path.parts
               for c in candidates)


def scrape_names(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_used_is_exported_by_the_service(service):
    """A live scrape of the running app: each ray_mt_* name the dashboard and alerts use must appear;
    ray_serve_* names must appear too, or at least be defined in Ray's source (some appear only
    under load or after a failure)."""
    used = used_metric_names()
    ours = {n for n in used if n.startswith("ray_mt_")}
    serves = used - ours
    assert all(n.startswith("ray_serve_") for n in serves), serves
    with service.client() as client:
        for text in ("A dog.", "Two men are playing football."):
            r = client.post("/v1/translate", json={"text": text, "source_lang": "en", "target_lang": "de"})
            assert r.status_code == 200, r.text
        r = client.post("/v1/translate", json={"text": "A dog.", "source_lang": "en", "target_lang": "xx"})
        assert r.status_code == 404, r.text
    deadline = time.time() + 90
    while True:
        scraped = scrape_names(service.metrics_url)
        missing = ours - scraped
        if not missing or time.time() > deadline:
            break
        time.sleep(1)
    assert not missing, f"used by dashboard/rules but not exported: {sorted(missing)}"
    not_in_ray = {n for n in serves - scraped if not ray_source_defines(n)}
    assert not not_in_ray, f"neither scraped nor defined by Ray Serve: {sorted(not_in_ray)}"


def test_ray_source_check_can_fail():
    assert ray_source_defines("ray_serve_deployment_queued_queries")
    assert not ray_source_defines("ray_serve_deployment_queued_querys")


def _labels(expr: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)=~?"([^"]*)"', expr))


def test_status_and_route_labels_match_the_service():
    """The label values alerts filter on are the ones service/metrics.py and service/api.py produce."""
    api = (REPO / "service/api.py").read_text()
    rules = yaml.safe_load(RULES.read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        labels = _labels(rule["expr"])
        if "status" in labels:
            assert re.fullmatch(r"[1-5]xx", labels["status"]), rule["alert"]
        if "route" in labels:
            assert f'"{labels["route"]}"' in api, (rule["alert"], labels["route"])
