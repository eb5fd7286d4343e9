"""The Helm chart: renders and lints for every values file, refuses bad values, and keeps its promises
(non-root, requests = limits, graceful termination, metrics port, GPUs only where asked)."""

from __future__ import annotations

import io
import json
import urllib.request
from typing import Any
from unittest import mock

import helm_python as helm
import pytest
import yaml

from service.settings import Limits
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

    secured = rendered_cases["secured.yaml"]
    assert secured.values["security"]["apiKeys"]["existingSecret"] == "mt-api-keys"
    assert not secured.of_kind("Secret")  # the chart never creates (or templates) the keys
    assert "api_keys_file" in secured.serve_config["applications"][0]["args"]


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
    "batching mode unknown": {"serve": {"batching": {"mode": "dynamic"}}},
    "slots below 8": {"serve": {"batching": {"slots": 4}}},
    "encode tokens below 64": {"serve": {"batching": {"maxEncodeTokens": 32}}},
    "unbounded ingress queue": {"serve": {"ingressMaxQueuedRequests": -1}},
    "ingress queue of 0": {"serve": {"ingressMaxQueuedRequests": 0}},
    "API keys inline": {"security": {"apiKeys": {"keys": "s3cret"}}},
    "API key as a value": {"security": {"apiKey": "s3cret"}},
    "bad Secret name": {"security": {"apiKeys": {"existingSecret": "Bad_Name"}}},
    "empty Secret key": {"security": {"apiKeys": {"existingSecret": "mt-api-keys", "key": ""}}},
    "Secret key with ..": {"security": {"apiKeys": {"existingSecret": "mt-api-keys", "key": "..keys"}}},
    "negative rate limit": {"security": {"rateLimitPerMinute": -1}},
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
    "rate limit without API keys": ({"security": {"rateLimitPerMinute": 60}}, "no keys are configured"),
}


@pytest.mark.parametrize("values,message", RENDER_ERRORS.values(), ids=RENDER_ERRORS.keys())
def test_cross_field_rules_fail_the_render(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_grace_period_at_the_bound_renders(chart):
    render(chart, {"pod": {"terminationGracePeriodSeconds": 45}})  # 10 + 30 + 5


def test_rate_limit_with_keys_from_env_or_zero_renders(chart):
    env = [{"name": "MT_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "k", "key": "keys"}}}]
    render(chart, {"security": {"rateLimitPerMinute": 60}, "pod": {"env": env}})
    render(chart, {"security": {"rateLimitPerMinute": 0}})


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
    entries = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert entries["MT_TEST_URL"]["value"] == "http://mt-mt-serve:8000/v1/translate"
    body = json.loads(entries["MT_TEST_BODY"]["value"])
    pairs = {p for m in rendered.values["serve"]["models"] for p in m["pairs"]}
    assert f"{body['source_lang']}-{body['target_lang']}" in pairs and body["text"]
    script = pod["spec"]["containers"][0]["command"][2]
    compile(script, "helm-test", "exec")  # the script is valid Python
    keys = rendered.values["security"]["apiKeys"]
    if keys["existingSecret"]:  # the key comes from the same Secret, never from values
        assert entries["MT_TEST_API_KEYS"] == {"name": "MT_TEST_API_KEYS", "valueFrom": {"secretKeyRef": {
            "name": keys["existingSecret"], "key": keys["key"]}}}
        assert 'headers["Authorization"] = f"Bearer {keys[0]}"' in script
    else:
        assert "MT_TEST_API_KEYS" not in entries


def run_helm_test_script(pod: dict[str, Any], environ: dict[str, str]) -> dict[str, str]:
    """Runs the helm test pod's script against a fake urlopen; returns the headers it sent."""
    sent = {}

    def urlopen(request, timeout):
        sent.update({k.lower(): v for k, v in request.header_items()})
        return io.BytesIO(b'{"translations": [{"text": "Ein Hund"}]}')

    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
    script = compile(pod["spec"]["containers"][0]["command"][2], "helm-test", "exec")
    with (mock.patch.dict("os.environ", {**env, **environ}), mock.patch.object(urllib.request, "urlopen", urlopen),
          pytest.raises(SystemExit) as done):
        exec(script, {})
    assert done.value.code == 0
    return sent


def test_helm_test_script_sends_the_first_key(rendered_cases):
    (pod,) = rendered_cases["secured.yaml"].of_kind("Pod")
    sent = run_helm_test_script(pod, {"MT_TEST_API_KEYS": "\n  first-key \nsecond-key\n"})
    assert sent["authorization"] == "Bearer first-key"
    (pod,) = rendered_cases["default"].of_kind("Pod")
    assert "authorization" not in run_helm_test_script(pod, {})


# -- API keys and the service's environment ------------------------------------------------------------
def test_api_keys_secret_is_mounted_read_only_in_every_ray_pod(rendered):
    keys = rendered.values["security"]["apiKeys"]
    args = rendered.serve_config["applications"][0]["args"]
    for template in ray_pod_templates(rendered):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        if not keys["existingSecret"]:
            assert "api-keys" not in volumes and "api-keys" not in mounts
            continue
        secret = volumes["api-keys"]["secret"]
        assert secret["secretName"] == keys["existingSecret"]
        assert secret["items"] == [{"key": keys["key"], "path": keys["key"]}]
        assert secret["defaultMode"] == 0o440
        assert mounts["api-keys"] == {"name": "api-keys", "mountPath": "/etc/mt-serve/api-keys", "readOnly": True}
    if keys["existingSecret"]:
        assert args["api_keys_file"] == f"/etc/mt-serve/api-keys/{keys['key']}"
    else:
        assert "api_keys_file" not in args
    rate = rendered.values["security"].get("rateLimitPerMinute")
    assert args.get("rate_limit_per_minute") == rate


def test_pod_env_reaches_head_and_every_worker_container(rendered):
    """The service's limits (MT_* in pod.env) hold wherever Serve places the ingress."""
    wanted = rendered.values["pod"]["env"]
    templates = ray_pod_templates(rendered)
    assert len(templates) == 1 + len(rendered.values["workerGroups"])
    for template in templates:
        env = template["spec"]["containers"][0]["env"]
        assert all(e in env for e in wanted), (template["metadata"]["labels"], wanted, env)


def test_mt_limits_in_values_files_are_valid_settings(rendered):
    """The limits set in pod.env (MT_<LIMIT>) are ones service/settings.py accepts and reads
    (a bad value would stop the service at start-up)."""
    env = {e["name"]: e["value"] for e in rendered.values["pod"]["env"]
           if e["name"].startswith("MT_") and "value" in e}
    with mock.patch.dict("os.environ", env, clear=True):
        limits = Limits()
    for name, value in env.items():
        field = Limits.model_fields.get(name.removeprefix("MT_").lower())
        if field:
            assert getattr(limits, name.removeprefix("MT_").lower()) == field.annotation(value), name


def test_chart_embeds_the_monitoring_files(rendered_cases):
    fleet = rendered_cases["gpu-fleet.yaml"]
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yaml").read_text())
    assert fleet.one("PrometheusRule")["spec"] == rules
    (dashboard,) = [c for c in fleet.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mt-serve.json"]) == json.loads(
        (REPO / "deploy/grafana/mt-serve.json").read_text())
