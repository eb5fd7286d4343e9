"""Every rendered object validates: built-in kinds against Kubernetes' own schemas (kubernetes-validate,
strict), custom resources against their CRDs' schemas made strict (unknown fields rejected)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CRDS, KUBE_VERSION, Rendered

CUSTOM_GROUPS = ("ray.io/", "monitoring.coreos.com/")


def is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith(CUSTOM_GROUPS)


# -- built-in kinds -----------------------------------------------------------------------------------
def validate_builtin(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {err.message} "
                             f"at {list(err.path)}") from None


def test_builtin_kinds_validate(rendered: Rendered):
    builtins = [o for o in rendered.objects if not is_custom(o)]
    assert builtins
    for obj in builtins:
        validate_builtin(obj)


def test_ray_pod_templates_validate_as_pod_templates(rendered: Rendered):
    """The pod templates inside the RayService, checked by Kubernetes' own PodTemplate schema (works
    without the CRD files, and is stricter than the CRD about pod fields)."""
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]
    for i, template in enumerate(templates):
        validate_builtin({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ray-{i}"},
                          "template": template})


def test_validator_catches_unknown_fields():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "i", "securityContxt": {}}]}}
    with pytest.raises(AssertionError, match="securityContxt"):
        validate_builtin(pod)


# -- custom resources ---------------------------------------------------------------------------------
def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 CRD schema as a JSON schema that rejects unknown fields, as the API server's
    pruning would drop them silently. Properties with a default are not required (the API server
    fills them in before it validates)."""
    s = dict(schema)
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
        if "required" in s:
            s["required"] = [r for r in s["required"] if "default" not in s["properties"].get(r, {})]
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(sub) for sub in s[key]]
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return s


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def validate_custom(obj: dict[str, Any]) -> None:
    validator = crd_validators().get((obj["apiVersion"], obj["kind"]))
    assert validator, f"no CRD schema for {obj['apiVersion']} {obj['kind']} in {CRDS}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, f"{obj['kind']} {obj['metadata']['name']}: " + "; ".join(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])


@pytest.fixture(scope="module")
def crds_present() -> None:
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is absent: custom resources (RayService, PodMonitor, ServiceMonitor, "
                    "PrometheusRule) are not validated against their CRDs")


def test_custom_resources_validate_strictly(rendered: Rendered, crds_present):
    custom = [o for o in rendered.objects if is_custom(o)]
    assert any(o["kind"] == "RayService" for o in custom)
    for obj in custom:
        validate_custom(obj)


def test_crd_validation_catches_unknown_and_missing_fields(rendered_cases, crds_present):
    service = rendered_cases["default"].one("RayService")
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoScaling"] = True
    with pytest.raises(AssertionError, match="enableInTreeAutoScaling"):
        validate_custom(typo)
    nested = copy.deepcopy(service)
    nested["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(AssertionError, match="gpus"):
        validate_custom(nested)
    missing = copy.deepcopy(service)
    del missing["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(AssertionError, match="groupName"):
        validate_custom(missing)
