"""The serveConfigV2 the chart generates is a config Ray Serve accepts, builds our app, and
has no key Serve would silently ignore."""

from __future__ import annotations

import importlib
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from service.app import AppArgs, ModelSpec
from tests.deploy.conftest import REPO, Rendered


def unknown_keys(model: type[BaseModel], data: Any, where: str = "") -> list[str]:
    """Keys of `data` that `model` does not define, recursively. Serve's schemas accept and drop
    unknown keys (forward compatibility), so a typo would pass validation unnoticed."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = {n for n, f in fields.items()} | {f.alias for f in fields.values() if f.alias}
    found = [f"{where}{k}" for k in data if k not in names]
    for name, field in fields.items():
        value = data.get(name, data.get(field.alias) if field.alias else None)
        for sub in _models_in(field.annotation):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    found += unknown_keys(sub, item, f"{where}{name}[{i}].")
            elif isinstance(value, dict):
                found += unknown_keys(sub, value, f"{where}{name}.")
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def check_serve_config(config: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(config)
    assert not unknown_keys(ServeDeploySchema, config), unknown_keys(ServeDeploySchema, config)
    for app, raw in zip(schema.applications, config["applications"]):
        module, attr = app.import_path.split(":")
        builder = getattr(importlib.import_module(module), attr)
        assert callable(builder), app.import_path
        args = AppArgs.model_validate(app.args)
        known = {f"model-{m.name}" for m in args.models} | {"ingress"}
        for deployment, raw_deployment in zip(app.deployments, raw.get("deployments", [])):
            assert deployment.name in known, f"{deployment.name} is not a deployment of {app.import_path}"
            if "autoscaling_config" in raw_deployment:
                AutoscalingConfig.model_validate(raw_deployment["autoscaling_config"])  # extra keys forbidden


def test_serve_config_is_accepted_by_ray_serve(rendered: Rendered):
    config = rendered.serve_config
    check_serve_config(config)
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])
    values = rendered.values["serve"]
    assert [m.name for m in args.models] == [m["name"] for m in values["models"]]
    for spec, model in zip(args.models, values["models"]):
        assert spec.pairs == model["pairs"]  # set explicitly: validation never reads model directories
        assert (spec.num_gpus, spec.num_cpus) == (model["numGpus"], model["numCpus"])
        assert spec.num_replicas == ("auto" if model["autoscaling"]["enabled"] else model["replicas"])
    batching = values["batching"]
    assert (args.batching.mode, args.batching.max_batch_tokens, args.batching.batch_wait_timeout_s,
            args.batching.max_batch_sentences, args.batching.slots, args.batching.max_encode_tokens) == (
        batching["mode"], batching["maxBatchTokens"], batching["batchWaitTimeoutS"],
        batching["maxBatchSentences"], batching["slots"], batching["maxEncodeTokens"])
    assert args.ingress_replicas == values["ingressReplicas"]
    assert args.ingress_max_queued_requests == values["ingressMaxQueuedRequests"] >= 1
    assert args.ingress_max_ongoing_requests == values["ingressMaxOngoingRequests"]
    security = rendered.values["security"]
    assert args.rate_limit_per_minute == security.get("rateLimitPerMinute")
    assert (args.api_keys_file is not None) == bool(security["apiKeys"]["existingSecret"])
    for d in app["deployments"]:
        assert d["graceful_shutdown_timeout_s"] == values["gracefulShutdownTimeoutS"]
    assert config["http_options"]["host"] == "0.0.0.0" and config["http_options"]["port"] == 8000


def test_autoscaling_values_reach_serve(rendered_cases):
    (app,) = rendered_cases["gpu-fleet.yaml"].serve_config["applications"]
    scaling = {d["name"]: d["autoscaling_config"] for d in app["deployments"]}
    assert scaling == {
        "model-embedded": {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 32},
        "model-opus-en-fr": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    }
    (app,) = rendered_cases["one-gpu.yaml"].serve_config["applications"]
    assert all("autoscaling_config" not in d for d in app["deployments"])


def test_batching_and_security_values_reach_serve(rendered_cases):
    (app,) = rendered_cases["secured.yaml"].serve_config["applications"]
    args = app["args"]
    assert args["batching"]["mode"] == "continuous"
    assert (args["batching"]["slots"], args["batching"]["max_encode_tokens"]) == (128, 4096)
    assert args["api_keys_file"] == "/etc/mt-serve/api-keys/keys"
    assert args["rate_limit_per_minute"] == 600 and args["ingress_max_queued_requests"] == 256
    (app,) = rendered_cases["default"].serve_config["applications"]
    assert app["args"]["batching"]["mode"] == "continuous"  # the chart's default, as the service's
    assert not {"api_keys_file", "rate_limit_per_minute"} & set(app["args"])


def test_default_values_render_deploy_serve_config(rendered_cases):
    """One shape: the chart's defaults give exactly the Serve config the Docker image runs."""
    assert rendered_cases["default"].serve_config == yaml.safe_load((REPO / "deploy/serve_config.yaml").read_text())


@pytest.mark.parametrize("path", ["deploy/serve_config.yaml", "deploy/serve_config.cpu.yaml"])
def test_deploy_serve_configs_are_accepted(path):
    check_serve_config(yaml.safe_load((REPO / path).read_text()))


def test_checks_catch_what_serve_would_ignore(rendered_cases):
    config = rendered_cases["default"].serve_config
    config["applications"][0]["deployments"][0]["graceful_shutdown_timeout"] = 30  # a typo Serve drops
    with pytest.raises(AssertionError, match="graceful_shutdown_timeout"):
        check_serve_config(config)
    config = rendered_cases["default"].serve_config
    config["applications"][0]["args"]["models"][0]["num_gpu"] = 1
    with pytest.raises(ValueError, match="num_gpu"):
        check_serve_config(config)


def test_a_queue_bound_of_zero_is_refused_when_the_config_is_read():
    # Serve itself refuses 0 only when it creates the deployment, long after a rollout started.
    with pytest.raises(ValidationError, match=r"-1 \(no limit\) or at least 1"):
        AppArgs(ingress_max_queued_requests=0)
    with pytest.raises(ValidationError, match=r"-1 \(no limit\) or at least 1"):
        ModelSpec(name="m", path="models/x", pairs=["en-de"], max_queued_requests=0)
    assert AppArgs(ingress_max_queued_requests=-1).ingress_max_queued_requests == -1
