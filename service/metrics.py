"""Every metric the service exports, defined in one place.

They are Ray metrics, so each replica's values reach the metrics agent of its node, which
serves them in the Prometheus format on the node's metrics export port (set with
`ray start --metrics-export-port`; 8080 in our deployments). Ray prefixes names with `ray_`
and appends `_total` to counters: `mt_requests` is scraped as `ray_mt_requests_total`.
Labels are bounded: model, pair, route, status class; never text, client addresses or ids.
The engine produces plain stats; this module turns them into metrics.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

from service.continuous import StepStats
from service.engine import BatchStats

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
STEP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
COUNT_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
TOKEN_BUCKETS = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
RATIO_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PER_TOKEN_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]

# Exported names (what Prometheus sees), for dashboards, alerts and tests.
EXPORTED = {
    "requests": "ray_mt_requests_total",
    "request_latency": "ray_mt_request_latency_seconds",
    "requests_in_flight": "ray_mt_requests_in_flight",
    "requests_shed": "ray_mt_requests_shed_total",
    "queue_wait": "ray_mt_queue_wait_seconds",
    "batch_requests": "ray_mt_batch_requests",
    "batch_sentences": "ray_mt_batch_sentences",
    "batch_tokens": "ray_mt_batch_tokens",
    "padding_ratio": "ray_mt_batch_padding_ratio",
    "encode": "ray_mt_encode_seconds",
    "decode": "ray_mt_decode_seconds",
    "input_tokens": "ray_mt_input_tokens_total",
    "output_tokens": "ray_mt_output_tokens_total",
    "time_per_output_token": "ray_mt_time_per_output_token_seconds",
    "sentences": "ray_mt_sentences_total",
    "slots_in_use": "ray_mt_slots_in_use",
    "slots": "ray_mt_slots",
    "cache_bytes": "ray_mt_kv_cache_bytes",
    "cache_usage": "ray_mt_kv_cache_usage_ratio",
    "waiting": "ray_mt_sentences_waiting",
    "admitted_per_step": "ray_mt_admitted_per_step",
    "step": "ray_mt_step_seconds",
}


def status_class(code: int) -> str:
    return f"{code // 100}xx"


class IngressMetrics:
    """Recorded by the HTTP ingress: one observation per request."""

    def __init__(self) -> None:
        self.requests = Counter("mt_requests", "HTTP requests by route, language pair and status class",
                                tag_keys=("route", "pair", "status"))
        self.latency = Histogram("mt_request_latency_seconds", "HTTP request latency, arrival to response",
                                 boundaries=LATENCY_BUCKETS, tag_keys=("route", "pair"))
        self.shed = Counter("mt_requests_shed", "requests answered 503 + Retry-After because a model was full "
                            "(also counted as 5xx in mt_requests)", tag_keys=("route",))
        self.in_flight = Gauge("mt_requests_in_flight", "requests being served by this ingress replica",
                               tag_keys=("replica",))

    def observe(self, route: str, pair: str, code: int, seconds: float) -> None:
        self.requests.inc(1, tags={"route": route, "pair": pair, "status": status_class(code)})
        if code == 503:
            self.shed.inc(1, tags={"route": route})
        self.latency.observe(seconds, tags={"route": route, "pair": pair})


class ModelMetrics:
    """Recorded by a model replica: one observation per batch (never per token)."""

    def __init__(self, model: str) -> None:
        tags = ("model",)
        self.tags = {"model": model}
        self.queue_wait = Histogram("mt_queue_wait_seconds", "wait from arrival at the model to its batch start",
                                    boundaries=LATENCY_BUCKETS, tag_keys=tags)
        self.batch_requests = Histogram("mt_batch_requests", "requests (chunks) served by one dynamic batch",
                                        boundaries=COUNT_BUCKETS, tag_keys=tags)
        self.batch_sentences = Histogram("mt_batch_sentences", "sentences in one decode batch",
                                         boundaries=COUNT_BUCKETS, tag_keys=tags)
        self.batch_tokens = Histogram("mt_batch_tokens", "padded source tokens in one decode batch",
                                      boundaries=TOKEN_BUCKETS, tag_keys=tags)
        self.padding = Histogram("mt_batch_padding_ratio", "share of a decode batch that is padding",
                                 boundaries=RATIO_BUCKETS, tag_keys=tags)
        self.encode = Histogram("mt_encode_seconds", "encoder time of one decode batch",
                                boundaries=STEP_BUCKETS, tag_keys=tags)
        self.decode = Histogram("mt_decode_seconds", "decoder time of one decode batch",
                                boundaries=STEP_BUCKETS, tag_keys=tags)
        self.per_token = Histogram("mt_time_per_output_token_seconds", "decode time per generated token",
                                   boundaries=PER_TOKEN_BUCKETS, tag_keys=tags)
        self.input_tokens = Counter("mt_input_tokens", "source tokens translated", tag_keys=tags)
        self.output_tokens = Counter("mt_output_tokens", "target tokens generated", tag_keys=tags)
        self.sentences = Counter("mt_sentences", "sentences translated", tag_keys=tags)

    def record_batch(self, requests: int, queue_waits: list[float], stats: list[BatchStats]) -> None:
        self.batch_requests.observe(requests, tags=self.tags)
        for wait in queue_waits:
            self.queue_wait.observe(wait, tags=self.tags)
        for st in stats:
            self.batch_sentences.observe(st.sentences, tags=self.tags)
            self.batch_tokens.observe(st.padded_tokens, tags=self.tags)
            self.padding.observe(st.padding_ratio, tags=self.tags)
            self.encode.observe(st.encode_s, tags=self.tags)
            self.decode.observe(st.decode_s, tags=self.tags)
            if st.output_tokens:
                self.per_token.observe(st.decode_s / st.output_tokens, tags=self.tags)
            self.input_tokens.inc(st.source_tokens, tags=self.tags)
            if st.output_tokens:
                self.output_tokens.inc(st.output_tokens, tags=self.tags)
            self.sentences.inc(st.sentences, tags=self.tags)


class ContinuousMetrics:
    """Recorded by a model replica in continuous mode: one observation per engine step."""

    def __init__(self, shared: ModelMetrics) -> None:
        tags = ("model",)
        self.tags = shared.tags
        # Queue wait and throughput are the same series in both modes.
        self.queue_wait, self.output_tokens, self.sentences = shared.queue_wait, shared.output_tokens, shared.sentences
        self.slots_in_use = Gauge("mt_slots_in_use", "decoder rows (slots) in use", tag_keys=tags)
        self.slots = Gauge("mt_slots", "decoder rows (slots) in all", tag_keys=tags)
        self.cache_bytes = Gauge("mt_kv_cache_bytes", "bytes of the preallocated KV cache", tag_keys=tags)
        self.cache_usage = Gauge("mt_kv_cache_usage_ratio", "share of the KV cache rows in use", tag_keys=tags)
        self.waiting = Gauge("mt_sentences_waiting", "sentences waiting for a slot", tag_keys=tags)
        self.admitted = Histogram("mt_admitted_per_step", "sentences admitted between two decoder steps",
                                  boundaries=COUNT_BUCKETS, tag_keys=tags)
        self.step = Histogram("mt_step_seconds", "one engine step: admissions plus one decoder step",
                              boundaries=STEP_BUCKETS, tag_keys=tags)

    def record_step(self, st: StepStats) -> None:
        t = self.tags
        self.slots_in_use.set(st.rows, tags=t)
        self.slots.set(st.slots, tags=t)
        self.cache_bytes.set(st.cache_bytes, tags=t)
        self.cache_usage.set(st.rows / st.slots, tags=t)
        self.waiting.set(st.waiting, tags=t)
        self.admitted.observe(st.admitted, tags=t)
        self.step.observe(st.encode_s + st.decode_s, tags=t)
        for wait in st.queue_waits:
            self.queue_wait.observe(wait, tags=t)
        if st.finished:
            self.sentences.inc(st.finished, tags=t)
        if st.output_tokens:
            self.output_tokens.inc(st.output_tokens, tags=t)
