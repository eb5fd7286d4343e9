"""One Ray version (and one torch version) across the image, the chart and pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import ray
import yaml

from tests.deploy.conftest import CHART, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()


def pinned(package: str) -> str:
    pattern = rf"{re.escape(package)}(\[[\w,]+\])?==([\w.]+)"
    (pin,) = [m for d in PYPROJECT["project"]["dependencies"] if (m := re.fullmatch(pattern, d))]
    return pin.group(2)


def test_ray_version_is_one_value(rendered_cases):
    (base,) = re.findall(r"^FROM\s+rayproject/ray:(\S+)", DOCKERFILE, flags=re.M)
    image_version, python_tag = re.fullmatch(r"([\d.]+)-(py\d+)-gpu", base).groups()
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    ray_pin = pinned("ray")
    assert image_version == ray_pin == chart_values["rayVersion"], (image_version, ray_pin, chart_values["rayVersion"])
    for case in rendered_cases.values():
        assert case.one("RayService")["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin
    assert ray.__version__ == ray_pin, "the virtual environment's Ray differs from the pin: make venv"
    # The image's Python is the project's (requires-python ">=3.11,<3.12": py311).
    minor = re.search(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert python_tag == f"py3{minor}", (python_tag, PYPROJECT["project"]["requires-python"])


def test_image_installs_the_pinned_torch():
    (version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)", DOCKERFILE, flags=re.M)
    assert version == pinned("torch"), (version, pinned("torch"))
    installs = re.findall(r"pip install [^&]*?torch==([^\s\"]+)", DOCKERFILE)
    assert installs == ["${TORCH_VERSION}"], installs
    assert "--index-url" in DOCKERFILE and "download.pytorch.org/whl/cu" in DOCKERFILE


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == "mt-serve" and chart["appVersion"] == PYPROJECT["project"]["version"]
