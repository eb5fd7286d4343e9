from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers import marian_config, save_hf_model, tiny_model_dir

# Tests run tiny models: for them one thread is faster than two (no OpenMP hand-offs per op).
torch.set_num_threads(1)

# Three shapes of checkpoint the loader must handle: activations, tying, vocab layout, depth.
CONFIGS = {
    "swish-shared-tied": dict(),
    "gelu-shared-untied": dict(activation_function="gelu", tie_word_embeddings=False, scale_embedding=False,
                               vocab_size=500, pad_token_id=499, decoder_start_token_id=499, encoder_layers=3,
                               decoder_layers=1, d_model=48, encoder_attention_heads=6, decoder_attention_heads=6),
    "relu-separate-vocabs": dict(activation_function="relu", share_encoder_decoder_embeddings=False,
                                 vocab_size=400, decoder_vocab_size=350, pad_token_id=349,
                                 decoder_start_token_id=349, encoder_layers=1, decoder_layers=3),
}


@pytest.fixture(scope="session", params=list(CONFIGS))
def hf_checkpoint(request, tmp_path_factory) -> tuple[Path, object]:
    """(directory, transformers model) for each random config."""
    path = tmp_path_factory.mktemp(request.param)
    model = save_hf_model(marian_config(**CONFIGS[request.param]), path, seed=len(request.param))
    return path, model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A Marian directory with a real sentencepiece tokenizer and random weights."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


# -- the real Ray Serve app on 127.0.0.1, serving the tiny model -------------------------------
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    metrics_url: str
    model_dir: Path
    metrics_port: int

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)


def _wait_for_http(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {seconds}s")


@pytest.fixture(scope="session")
def service(tiny_model) -> Iterator[Service]:
    import ray
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app
    from service.settings import BatchingConfig

    http_port, metrics_port = free_port(), free_port()
    ray.init(_node_ip_address=HOST, num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port,
             configure_logging=False, _system_config={"metrics_report_interval_ms": 1000})
    try:
        serve.start(http_options={"host": HOST, "port": http_port})
    except ray.exceptions.ActorDiedError:
        # On a starved machine the controller can kill the proxy it is starting before it runs;
        # it starts a fresh one itself: connect to that controller and wait for HTTP (below).
        serve.start(http_options={"host": HOST, "port": http_port})
    spec = ModelSpec(name="tiny", path=str(tiny_model), pairs=["en-de", "de-en"], num_cpus=1, threads=1)
    # Request-level batching with a generous wait, so concurrent test requests meet in one batch;
    # the default (continuous) app is tests/service/test_continuous_http.py's, compared with this one.
    args = AppArgs(models=[spec], batching=BatchingConfig(mode="request", batch_wait_timeout_s=0.05))
    serve.run(build_app(args), name="mt", route_prefix="/")
    _wait_for_http(f"http://{HOST}:{http_port}/healthz")
    try:
        yield Service(f"http://{HOST}:{http_port}", f"http://{HOST}:{metrics_port}/metrics", tiny_model, metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def reference(tiny_model):
    """The same model, in-process, without Ray or HTTP."""
    from model.translator import Translator

    return Translator(tiny_model, device="cpu")
