"""The Helm chart: renders and lints for every values file, refuses bad values, and keeps its promises
(non-root, requests = limits, graceful termination, metrics port, GPUs only where asked)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.conftest import CASES, CHART, KUBE_VERSION, NAMESPACE, REPO, Rendered, case_values, render


# -- renders and lints --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_lint_is_clean(case):
    report = helm.lint(CHART, case_values(case), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], problems or report["errors"]


def test_every_case_renders_the_core_objects(rendered):
    kinds = {o["kind"] for o in rendered.objects}
    assert {"RayService", "Service", "Pod"} <= kinds, kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(names) == len(set(names)), names
    for obj in rendered.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "mt", obj["metadata"]
    assert "helm test" in rendered.manifests["mt-serve/templates/NOTES.txt"]


def test_values_files_shape_the_cluster(rendered_cases):
    cpu = rendered_cases["cpu-dev.yaml"].one("RayService")["spec"]["rayClusterConfig"]
    assert "workerGroupSpecs" not in cpu and cpu["enableInTreeAutoscaling"] is False
    assert "nvidia.com/gpu" not in json.dumps(rendered_cases["cpu-dev.yaml"].objects)
    assert not rendered_cases["cpu-dev.yaml"].of_kind("PodDisruptionBudget")

    one = rendered_cases["one-gpu.yaml"].one("RayService")["spec"]["rayClusterConfig"]
    (group,) = one["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 1, 1)
    assert one["enableInTreeAutoscaling"] is False
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    fleet = rendered_cases["gpu-fleet.yaml"]
    spec = fleet.one("RayService")["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] == 600
    assert spec["workerGroupSpecs"][0]["maxReplicas"] == 8
    assert {"PodMonitor", "PrometheusRule", "ConfigMap", "Ingress", "PodDisruptionBudget"} <= {
        o["kind"] for o in fleet.objects}
    assert not fleet.of_kind("ServiceMonitor")
    assert rendered_cases["gpu-fleet+servicemonitor"].of_kind("ServiceMonitor")
    default_kinds = {o["kind"] for o in rendered_cases["default"].objects}
    assert not default_kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Ingress"}


# -- bad values are refused ---------------------------------------------------------------------------
FLEET_MODEL = case_values("gpu-fleet.yaml")["serve"]["models"][0]
SCHEMA_ERRORS: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"replicaCount": 3},
    "unknown nested key": {"serve": {"batching": {"maxBatchToken": 4096}}},
    "unknown model key": {"serve": {"models": [{**FLEET_MODEL, "gpus": 1}]}},
    "model without pairs": {"serve": {"models": [{k: v for k, v in FLEET_MODEL.items() if k != "pairs"}]}},
    "bad pair": {"serve": {"models": [{**FLEET_MODEL, "pairs": ["english-german"]}]}},
    "bad dtype": {"serve": {"models": [{**FLEET_MODEL, "dtype": "float8"}]}},
    "autoscaling without bounds": {"serve": {"models": [{**FLEET_MODEL, "autoscaling": {"enabled": True}}]}},
    "batch wait above 1 s": {"serve": {"batching": {"batchWaitTimeoutS": 5}}},
    "string where a number goes": {"pod": {"terminationGracePeriodSeconds": "sixty"}},
    "resources without memory": {"head": {"resources": {"cpu": "2", "memory": None}}},
    "bad cpu quantity": {"head": {"resources": {"cpu": "two"}}},
    "bad Ray version": {"rayVersion": "latest"},
}


@pytest.mark.parametrize("values", SCHEMA_ERRORS.values(), ids=SCHEMA_ERRORS.keys())
def test_schema_refuses_bad_values(chart, values):
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(chart, values)


def test_bad_values_file_fails_render_and_lint(chart, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve:\n  ingressReplicas: 0\n  batching:\n    maxBatchTokens: 4096\n    oops: true\n")
    values = helm.values_from_yaml(bad.read_text())
    with pytest.raises(helm.HelmValuesError) as err:
        render(chart, values)
    assert "oops" in str(err.value) and "ingressReplicas" in str(err.value)
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"], report


RENDER_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "grace period too short": ({"pod": {"terminationGracePeriodSeconds": 44}},
                               "terminationGracePeriodSeconds must be >= .* = 45"),
    "GPU model without GPU workers": ({"workerGroups": []}, "no workerGroups entry has gpus > 0"),
    "duplicate model names": ({"serve": {"models": [FLEET_MODEL, {**FLEET_MODEL, "pairs": ["en-fr"]}]}},
                              "used twice"),
    "autoscaling min above max": ({"serve": {"models": [{**FLEET_MODEL, "autoscaling": {
        "enabled": True, "minReplicas": 5, "maxReplicas": 2, "targetOngoingRequests": 8}}]}}, "minReplicas"),
    "worker replicas above max": ({"workerGroups": [{**case_values("one-gpu.yaml")["workerGroups"][0],
                                                     "replicas": 2}]}, "minReplicas <= replicas <= maxReplicas"),
}


@pytest.mark.parametrize("values,message", RENDER_ERRORS.values(), ids=RENDER_ERRORS.keys())
def test_cross_field_rules_fail_the_render(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_grace_period_at_the_bound_renders(chart):
    render(chart, {"pod": {"terminationGracePeriodSeconds": 45}})  # 10 + 30 + 5


# -- what every Ray pod promises -----------------------------------------------------------------------
def ray_pod_templates(r: Rendered) -> list[dict[str, Any]]:
    cluster = r.one("RayService")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


def containers(r: Rendered) -> list[dict[str, Any]]:
    """Every container the release runs: Ray containers, the autoscaler sidecar, the test pod."""
    out = [c for t in ray_pod_templates(r) for c in t["spec"]["containers"]]
    out += [c for p in r.of_kind("Pod") for c in p["spec"]["containers"]]
    options = r.one("RayService")["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if options:
        out.append({"name": "autoscaler", **options})
    return out


def test_pods_and_containers_run_locked_down(rendered):
    pods = [t["spec"] for t in ray_pod_templates(rendered)] + [p["spec"] for p in rendered.of_kind("Pod")]
    for pod in pods:
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, ctx
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, ctx
    for c in containers(rendered):
        ctx = c["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, c["name"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]


def test_ray_writes_only_to_an_emptydir_tmp(rendered):
    for template in ray_pod_templates(rendered):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        ray = template["spec"]["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], template


def test_requests_equal_limits(rendered):
    for c in containers(rendered):
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]


def test_gpus_only_on_gpu_worker_groups(rendered):
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    values_groups = {g["name"]: g for g in rendered.values["workerGroups"]}
    for group in cluster.get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = values_groups[group["groupName"]]["gpus"]
        assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None), group["groupName"]
        if gpus:
            tolerations = group["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), group["groupName"]
            assert group["template"]["spec"]["nodeSelector"], group["groupName"]


def test_termination_grace_covers_prestop_and_serve_shutdown(rendered):
    shutdown = max(d["graceful_shutdown_timeout_s"] for app in rendered.serve_config["applications"]
                   for d in app["deployments"])
    for template in ray_pod_templates(rendered):
        command = template["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command
        assert template["spec"]["terminationGracePeriodSeconds"] >= int(command[1]) + shutdown + 5


def test_every_ray_node_exports_metrics_on_8080(rendered):
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080 and ports["serve"] == 8000
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    for monitor in rendered.of_kind("PodMonitor"):
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for monitor in rendered.of_kind("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in rendered.of_kind("Service")
                      if selector.items() <= s["metadata"]["labels"].items()]
        assert service["spec"]["clusterIP"] == "None"
        assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("metrics", 8080)]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_selectors_find_the_ray_pods(rendered):
    labels = [t["metadata"]["labels"] for t in ray_pod_templates(rendered)]
    api = next(s for s in rendered.of_kind("Service") if s["metadata"]["name"] == "mt-mt-serve")
    selector = dict(api["spec"]["selector"])
    assert selector.pop("ray.io/serve") == "true"  # KubeRay labels pods whose Serve proxy is healthy
    assert all(selector.items() <= pod.items() for pod in labels), (selector, labels)
    assert api["spec"]["ports"][0]["port"] == 8000 and api["spec"]["ports"][0]["targetPort"] == "serve"
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for obj in rendered.of_kind(kind):
            match = obj["spec"]["selector"]["matchLabels"]
            assert all(match.items() <= pod.items() for pod in labels), (kind, match)
    for ingress in rendered.of_kind("Ingress"):
        backends = {p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                    for p in rule["http"]["paths"]}
        assert backends == {"mt-mt-serve"}


def test_helm_test_pod_posts_a_translation(rendered):
    (pod,) = rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["MT_TEST_URL"] == "http://mt-mt-serve:8000/v1/translate"
    body = json.loads(env["MT_TEST_BODY"])
    pairs = {p for m in rendered.values["serve"]["models"] for p in m["pairs"]}
    assert f"{body['source_lang']}-{body['target_lang']}" in pairs and body["text"]
    compile(pod["spec"]["containers"][0]["command"][2], "helm-test", "exec")  # the script is valid Python


def test_chart_embeds_the_monitoring_files(rendered_cases):
    fleet = rendered_cases["gpu-fleet.yaml"]
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yaml").read_text())
    assert fleet.one("PrometheusRule")["spec"] == rules
    (dashboard,) = [c for c in fleet.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mt-serve.json"]) == json.loads(
        (REPO / "deploy/grafana/mt-serve.json").read_text())
