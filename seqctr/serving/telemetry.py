"""Where a request's time goes: per-stage timers on the request path, exported as Ray Serve custom
metrics, so they appear on each node's Prometheus endpoint (and deploy/grafana/seqctr_serving.json).

Stages, in order, each a `seqctr_stage_ms{stage=...}` histogram observation per request:

    receive     ASGI entry of the replica -> the whole body received (under Serve the replica pulls
                the body from the proxy: an actor call)
    parse       body received -> route body: JSON decode, pydantic validation, the guards (API key,
                media type) and the payload dict
    encode      ids -> item rows and hashed buckets, click ages (`prepare_job`)
    embed       cold-start texts through the ItemEncoder (0 when the request has none)
    batch_wait  queued for `@serve.batch` until its batch starts
    model       the forward of the batch the request was in (the whole batch's time, as the request
                experienced it; the batch's own size goes to `seqctr_batch_size`)
    response    the response dict and its JSON bytes, built once

Counters and histograms besides: `seqctr_requests_total{model,version,variant}` (the version tag says
which model answered, so a hot reload is visible as one series ending and another starting; `variant` is
the serve.variants name, `default` for the single model), `seqctr_shadow_total{variant,outcome}`
(shadow scorings: scored | failed | skipped when too many were in flight),
`seqctr_candidates_total{source=known|text|hashed}`, `seqctr_candidates_per_request`,
`seqctr_batch_size`. Serve adds the deployment, replica and application tags itself.

Metric objects are created once per replica; recording is a handful of `observe`/`inc` calls per
request (a few tens of microseconds), independent of the catalogue size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STAGES = ("receive", "parse", "encode", "embed", "batch_wait", "model", "response")
STAGE_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2500]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
CANDIDATE_BOUNDARIES = [1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


@dataclass
class StageTimes:
    """Milliseconds per stage of one request, filled in as it moves along the path."""

    ms: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.perf_counter)

    def start(self, at: float | None = None) -> None:
        """Start the clock of the next stage now (or at `at`, a perf_counter value)."""
        self._mark = time.perf_counter() if at is None else at

    def stop(self, stage: str) -> None:
        """Close `stage` (adding to it if it ran before) and start the next one."""
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._mark) * 1000
        self._mark = now

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + ms


class ServingMetrics:
    """The Serve custom metrics of one scorer replica (created in the replica, where Serve tags them)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.stage_ms = Histogram(
            "seqctr_stage_ms",
            description="Milliseconds a request spent in each stage of the scoring path.",
            boundaries=STAGE_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.batch_size = Histogram(
            "seqctr_batch_size",
            description="Requests scored together in one model forward (@serve.batch).",
            boundaries=BATCH_BOUNDARIES,
        )
        self.candidates = Histogram(
            "seqctr_candidates_per_request",
            description="Candidates per scored request.",
            boundaries=CANDIDATE_BOUNDARIES,
        )
        self.candidate_sources = Counter(
            "seqctr_candidates_total",
            description="Scored candidates by how they were represented (known | text | hashed).",
            tag_keys=("source",),
        )
        self.requests = Counter(
            "seqctr_requests_total",
            description="Scored requests, by the model name and version that answered them.",
            tag_keys=("model", "version", "variant"),
        )
        self.shadows = Counter(
            "seqctr_shadow_total",
            description="Shadow scorings by variant and outcome (scored | failed | skipped).",
            tag_keys=("variant", "outcome"),
        )
        self._stage_tags = {stage: {"stage": stage} for stage in STAGES}

    def record_request(
        self, times: StageTimes, sources: list[str], model: str, version: str, variant: str | None = None
    ) -> None:
        """One scored request: its stage times, candidate counts and the model that answered."""
        for stage, ms in times.ms.items():
            self.stage_ms.observe(ms, tags=self._stage_tags.get(stage) or {"stage": stage})
        self.candidates.observe(len(sources))
        known = sources.count("known")
        text = sources.count("text")
        for source, count in (("known", known), ("text", text), ("hashed", len(sources) - known - text)):
            if count:
                self.candidate_sources.inc(count, tags={"source": source})
        self.requests.inc(tags={"model": model, "version": version, "variant": variant or "default"})

    def record_shadow(self, variant: str, outcome: str) -> None:
        self.shadows.inc(tags={"variant": variant, "outcome": outcome})

    def record_batch(self, size: int) -> None:
        self.batch_size.observe(size)
