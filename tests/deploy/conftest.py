"""The chart rendered by a real Helm engine (helm-python-sdk, Helm v4 inside), once per values case."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
CRDS = REPO.parent / "shared" / "k8s" / "crds"  # data only, never copied into the repo
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "mt", "translate"

# Values cases: the chart's defaults, each file in helm/ci/, and overrides that switch on what
# the files leave off (the ServiceMonitor) so that every template is rendered by some case.
VALUES_FILES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
EXTRA_CASES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "gpu-fleet+servicemonitor": ("gpu-fleet.yaml", {"monitoring": {"serviceMonitor": {"enabled": True},
                                                                   "podMonitor": {"enabled": False}}}),
}
CASES = ["default", *VALUES_FILES, *EXTRA_CASES]


def case_values(case: str) -> dict[str, Any] | None:
    """What `helm template -f helm/ci/<file> [--set ...]` passes for a case (None: the defaults)."""
    if case == "default":
        return None
    file, overrides = EXTRA_CASES.get(case, (case, {}))
    values = helm.values_from_yaml((CHART / "ci" / file).read_text()) if file else {}
    return _deep_merge(values, overrides)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Rendered:
    case: str
    values: dict[str, Any]             # the merged values the templates saw
    manifests: dict[str, str]          # template path -> text
    objects: list[dict[str, Any]]      # every Kubernetes object, hooks included

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.case}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def serve_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.one("RayService")["spec"]["serveConfigV2"])


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None) -> dict[str, str]:
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.fixture(scope="session")
def rendered_cases(chart) -> dict[str, Rendered]:
    out = {}
    for case in CASES:
        values = case_values(case)
        manifests = render(chart, values)
        objects = [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
                   for doc in yaml.safe_load_all(text) if doc]
        out[case] = Rendered(case, chart.merge_values(values), manifests, objects)
    return out


@pytest.fixture(params=CASES)
def rendered(request, rendered_cases) -> Rendered:
    return rendered_cases[request.param]
