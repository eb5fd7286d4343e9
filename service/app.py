"""The application builder: `serve run service.app:build_app [key=value ...]` or a Serve config file.

One model: one deployment that is both the HTTP ingress and the model (a request crosses no Ray
hop after Serve's proxy). Several models (or `separate_ingress`): each model directory becomes its
own deployment (replicas, CPUs/GPUs, batching) and the ingress routes each language pair to the
deployment that serves it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from model.translator import EMBEDDED_MODEL, language_pairs
from service.api import Ingress
from service.deployments import ModelDeployment
from service.settings import BatchingConfig


def _queue_bound(v: int) -> int:
    # Serve refuses 0 only when the deployment is created; say so while the config is read.
    if v == 0:
        raise ValueError("a queue bound is -1 (no limit) or at least 1")
    return v


QueueBound = Annotated[int, Field(ge=-1), AfterValidator(_queue_bound)]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    path: str
    pairs: list[str] | None = Field(None, description="default: read from the model directory")
    num_replicas: int | str = Field(1, description='a count, or "auto" for Serve autoscaling')
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(0, ge=0, description="torch threads per replica (0: OMP_NUM_THREADS or all cores)")
    dtype: str | None = Field(None, pattern=r"^(float32|float16|bfloat16)$")
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: QueueBound = Field(256, description="-1: no limit (Serve's default); 0 is not a bound")

    def resolved_pairs(self) -> list[str]:
        return self.pairs or language_pairs(self.path)


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(name="embedded", path=str(EMBEDDED_MODEL))])
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    ingress_replicas: int = Field(1, ge=1)
    ingress_max_ongoing_requests: int = Field(256, ge=1, description="requests one ingress replica handles at once")
    ingress_max_queued_requests: QueueBound = Field(512, description="beyond this the proxy answers 503 + Retry-After")
    # Where keys come from (a mounted Secret); the keys themselves never appear in args.
    api_keys_file: str | None = None
    rate_limit_per_minute: int | None = Field(None, ge=0, description="texts per minute per API key")
    separate_ingress: bool = Field(False, description="one model too gets its own deployment behind the ingress "
                                                      "(several models always do)")

    @model_validator(mode="after")
    def _unique(self) -> AppArgs:
        seen: dict[str, str] = {}
        for spec in self.models:
            for pair in spec.resolved_pairs():
                if pair in seen:
                    raise ValueError(f"pair {pair} is served by both {seen[pair]} and {spec.name}")
                seen[pair] = spec.name
        return self


def build_app(args: AppArgs) -> Application:
    if isinstance(args, dict):  # `serve run module:build_app key=value` hands over a dict
        args = AppArgs.model_validate(args)
    pairs = {p: spec.name for spec in args.models for p in spec.resolved_pairs()}
    if len(args.models) == 1 and not args.separate_ingress:
        return _hosted_in_ingress(args, args.models[0], pairs)
    handles = {}
    for spec in args.models:
        handles[spec.name] = ModelDeployment.options(
            name=f"model-{spec.name}", user_config=args.batching.model_dump(),
            max_ongoing_requests=spec.max_ongoing_requests, max_queued_requests=spec.max_queued_requests,
            **_placement(spec)).bind(spec.name, *_host_args(spec, args.batching))
    return Ingress.options(num_replicas=args.ingress_replicas, max_ongoing_requests=args.ingress_max_ongoing_requests,
                           max_queued_requests=args.ingress_max_queued_requests).bind(
        handles, pairs, args.api_keys_file, args.rate_limit_per_minute)


def _hosted_in_ingress(args: AppArgs, spec: ModelSpec, pairs: dict[str, str]) -> Application:
    """One deployment, HTTP and model together: its replicas are the model's. The model sheds load
    itself (503 + Retry-After past `batching.max_queue_delay_s` of work), so Serve's own bounds are the
    ingress's, which only an HTTP flood reaches."""
    return Ingress.options(name=f"model-{spec.name}", user_config=args.batching.model_dump(),
                           max_ongoing_requests=max(args.ingress_max_ongoing_requests, spec.max_ongoing_requests),
                           max_queued_requests=args.ingress_max_queued_requests,
                           health_check_period_s=10, health_check_timeout_s=30, **_placement(spec)).bind(
        {}, pairs, args.api_keys_file, args.rate_limit_per_minute, {spec.name: _host_args(spec, args.batching)})


def _placement(spec: ModelSpec) -> dict:
    return {"ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
            "num_replicas": "auto" if spec.num_replicas == "auto" else int(spec.num_replicas)}


def _host_args(spec: ModelSpec, batching: BatchingConfig) -> tuple:
    """ModelHost's arguments after the name."""
    return (spec.path, spec.resolved_pairs(), "cuda" if spec.num_gpus > 0 else "cpu", spec.threads, spec.dtype,
            batching.model_dump())
