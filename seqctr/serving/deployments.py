"""Ray Serve deployments: `CTRScorer` (the CTR model, batched, hot-reloadable) and `ItemEncoder` (BERT
for cold-start items). seqctr/serving/app.py puts the HTTP routes on the scorer.

Request path: HTTP -> CTRScorer.score -> (ItemEncoder.encode for unseen ids with text) -> one
`@serve.batch` call that scores every concurrent request of the batch together through the model's
public `CTRModel.score_groups`: the sequence encoder runs once over the B histories and one head pass
covers every candidate of the batch, on one executor thread so the event loop goes on parsing the
next requests meanwhile. Batch size and wait come from `serve:` in the app's config (wait 0: a batch
is whatever queued while the previous one ran); `info()` (GET /v1/model) counts the batches by size.

Cold start, in order: an id in the model's item index uses its learned vectors (`known`); an unseen id
with text gets its text embedded by the ItemEncoder and its id hashed into a bucket (`text`); an
unseen id without text is scored through its hashed id bucket alone (`hashed`) -- the id embedding
learned for the training items that share the bucket plus no text -- so it is never an error.

Hot reload: `reconfigure({"model": URI})` (Serve calls it when the deployment's `user_config` changes)
loads the new checkpoint fully in a thread while requests keep using the old model, then swaps one
reference. A failed load (missing folder, sha256 mismatch) keeps the old model and records the error,
which `info()` (GET /v1/model) shows and the replica log records.

Champion and challenger (seqctr/serving/variants.py): a user_config with `variants` loads each named model
beside the others in this replica, reusing every already loaded checkpoint, so a weight change loads
nothing; a request goes to the variant its user_id hashes to, and the response names it (`variant`).
A shadow variant scores a sampled share of requests in an asyncio task started once the response is
built (nobody awaits it: never on the request's latency path, and its failure fails no request); its
scores are logged, with the request id, beside the served ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import uuid
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve.exceptions import RayServeException

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.ctr import CTRModel
from seqctr.platform.model.features import UNKNOWN, ItemIndex, age_buckets, encode_ids
from seqctr.platform.model.predictor import load_model
from seqctr.platform.model.side import SideLayout, encode_request_side, request_user_item_counts
from seqctr.platform.registry import SCHEME as REGISTRY_SCHEME
from seqctr.platform.runs import resolve_latest
from seqctr.serving.impressions import ImpressionLog
from seqctr.serving.telemetry import ServingMetrics, StageTimes
from seqctr.serving.variants import Variant, VariantSpec, VariantTable, check_variants, shadow_record

logger = logging.getLogger("ray.serve")
Loader = Callable[[str, str], Any]
"""(checkpoint folder, device) -> an object with .model, .config, .index, .metrics (a LoadedModel)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------- the served model


class ModelSpec(BaseModel):
    """The scorer's `user_config`: which model to serve.

    `model` is the URI as the user gave it (reported by /v1/model); `resolved` pins what it meant when the
    app was (re)deployed (registry://NAME@v0003 for an alias, an absolute folder), so every replica loads
    the same version and an alias move is a user_config change; `fallback` is loaded by a new replica
    whose model fails, so scaling up after a failed reload still serves the previous model.

    `variants` (name -> VariantSpec) serves several models instead (champion and challenger); `model`,
    `resolved` and `fallback` are then unused (each variant has its own)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    resolved: str | None = None
    fallback: str | None = None
    variants: dict[str, VariantSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_serve(self) -> ModelSpec:
        if not self.variants and not self.model:
            raise ValueError("CTRScorer user_config: give `model` or `variants` (serve.variants)")
        check_variants(self.variants)
        return self


@dataclass(frozen=True)
class ServingModel:
    """A loaded checkpoint plus what the API reports about it."""

    loaded: Any  # LoadedModel: .model (CTRModel), .config, .index, .metrics
    uri: str
    source: str  # what was loaded: spec.resolved or spec.model
    checkpoint: str
    name: str
    version: str
    quantized: str = "none"
    loaded_at: str = field(default_factory=_now)
    item_values: np.ndarray | None = field(default=None, repr=False)  # (items, F) of data.features.user_item_counts

    def __post_init__(self) -> None:
        if self.item_values is None:  # taken from the model once, off the device, never per request
            sample_side = getattr(self.loaded.model, "sample_side", None)
            values = getattr(sample_side, "item_value_hash", None)
            if values is not None:
                object.__setattr__(self, "item_values", values.cpu().numpy())

    @property
    def model(self) -> CTRModel:
        return self.loaded.model

    @property
    def config(self) -> ExperimentConfig:
        return self.loaded.config

    @property
    def index(self) -> ItemIndex:
        return self.loaded.index

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "resolved": self.source,
            "checkpoint": self.checkpoint,
            "loaded_at": self.loaded_at,
            "metrics": dict(self.loaded.metrics or {}),
            "attention": self.model.attention is not None,
            "quantized": self.quantized,
            "config": {
                "model": cfg.model.model_dump(),
                "max_seq_len": cfg.data.max_seq_len,
                "encoder": encoder_settings(cfg),
            },
        }


def encoder_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The text-encoder settings the checkpoint's item table was embedded with (cold start reuses them)."""
    return {"name": cfg.embed.model, "max_length": cfg.embed.max_length, "pooling": cfg.embed.pooling}


def resolve_checkpoint(uri: str, cfg: ExperimentConfig) -> str:
    """registry://NAME@ALIAS or a pyarrow.fs URI -> a verified local folder; a local folder stays as it is
    (the loader verifies it)."""
    if uri.startswith(REGISTRY_SCHEME) or "://" in uri:
        from seqctr.platform.registry import resolve_checkpoint_uri

        return resolve_checkpoint_uri(uri, cfg)
    return str(Path(uri).expanduser().resolve())


def pin_model(uri: str, cfg: ExperimentConfig) -> str:
    """registry://NAME@ALIAS -> registry://NAME@v0003 (the version the alias names now); RUNS/NAME/latest
    -> the checkpoint it points at now; a local folder -> its absolute path; other URIs unchanged."""
    uri = resolve_latest(uri) or uri
    if uri.startswith(REGISTRY_SCHEME):
        from seqctr.platform.registry import Registry, default_registry_root

        return Registry(default_registry_root(cfg)).get(uri).uri
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def model_identity(uri: str, checkpoint: str, cfg: ExperimentConfig) -> tuple[str, str]:
    """(name, version): the registry name and version folder (v0003) for registry URIs, else the
    experiment name and `sha256:` + the first 12 hex digits of the checkpoint manifest's hash."""
    folder = Path(checkpoint)
    if uri.startswith(REGISTRY_SCHEME):
        name = uri[len(REGISTRY_SCHEME) :].partition("@")[0]
        if re.fullmatch(r"v\d+", folder.name):
            return name, folder.name
    else:
        name = cfg.name
    manifest = folder / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.exists() else "unknown"
    return name, f"sha256:{digest}"


def quantize_int8(model: CTRModel) -> CTRModel:
    """PyTorch dynamic int8 quantisation of the LSTM/GRU and Linear layers (CPU only; a copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear}, dtype=torch.qint8
        ).eval()


def load_serving_model(
    spec: ModelSpec, app_cfg: ExperimentConfig, loader: Loader = load_model, device: str = "cpu"
) -> ServingModel:
    """Resolve, verify and load one model, quantised when serve.quantize=int8 on CPU."""
    source = spec.resolved or spec.model
    checkpoint = resolve_checkpoint(source, app_cfg)
    loaded = loader(checkpoint, device)
    quantized = "none"
    if app_cfg.serve.quantize == "int8" and torch.device(device).type == "cpu":
        loaded.model = quantize_int8(loaded.model)
        quantized = "int8"
    name, version = model_identity(source, checkpoint, loaded.config)
    return ServingModel(loaded, spec.model, source, checkpoint, name, version, quantized)


# ----------------------------------------------------------------------------- request encoding


@dataclass
class Job:
    """One request, encoded against one model: history (most recent max_seq_len) and candidates."""

    history: list[str]
    hist_idx: np.ndarray  # (n,) item rows
    hist_bucket: np.ndarray  # (n,) id buckets
    hist_age: np.ndarray  # (n,) click age buckets (UNKNOWN without timestamps)
    candidates: list[str]
    cand_idx: np.ndarray  # (C,)
    cand_bucket: np.ndarray  # (C,)
    sources: list[str]  # per candidate: known | text | hashed
    cold: list[int]  # candidate positions to embed from text
    cold_texts: list[str]
    explain: bool
    text: np.ndarray | None = None  # (len(cold), Dt) once embedded
    times: StageTimes = field(default_factory=StageTimes)  # per-stage milliseconds (telemetry.py)
    variant: str | None = None  # the serve.variants name that scores it (None: the single model)
    user_id: str | None = None
    request_id: str = ""
    payload: dict[str, Any] | None = None  # kept only when shadows will score the request too
    shadows: list[Variant] = field(default_factory=list)
    encoder: dict[str, Any] | None = None  # the served model's text-encoder settings (shadows reuse its texts)
    side: dict[str, np.ndarray] | None = None  # per-request side inputs, (1, ...) each (data.features)


def encode_items(ids: list[str], index: ItemIndex, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, buckets) of item ids by `features.encode_ids`, the encoder training uses, so serving can never
    drift from it: known items use the index, unknown ids (row 1) hash their string."""
    return encode_ids(ids, index, num_buckets)


def click_ages(payload: dict[str, Any], kept: int) -> np.ndarray:
    """Age buckets of the last `kept` history clicks at the request's time (the server's clock when the
    request has none), as training computes them; unknown (1) for a click without a timestamp."""
    ages = np.full(kept, UNKNOWN, dtype=np.int64)
    stamps = payload.get("history_timestamps")
    if stamps is None or kept == 0:
        return ages
    now = payload.get("timestamp")
    now = int(time.time()) if now is None else int(now)
    recent = stamps[len(stamps) - kept :]
    known = np.array([s is not None for s in recent])
    if known.any():
        ages[known] = age_buckets(now - np.array([s for s in recent if s is not None], dtype=np.int64))
    return ages


def prepare_job(model: ServingModel, payload: dict[str, Any]) -> Job:
    """Encode a request (`ScoreRequest.payload()`); histories longer than max_seq_len keep the most recent."""
    cfg = model.config
    history = [str(h) for h in payload["history"]][-cfg.data.max_seq_len :]
    candidates = [str(c) for c in payload["candidates"]]
    texts = payload.get("texts") or [None] * len(candidates)
    hist_idx, hist_bucket = encode_items(history, model.index, cfg.model.id_buckets)
    hist_age = click_ages(payload, len(history))
    cand_idx, cand_bucket = encode_items(candidates, model.index, cfg.model.id_buckets)
    # Raises FeatureFieldError (a 422) for a side field of the wrong kind (side.encode_request_side).
    layout = getattr(model.model, "side_layout", SideLayout())
    side = encode_request_side(payload, layout, cfg.model) or None
    if layout.user_item:  # per candidate: the user's counts by the candidate's value (side.request_user_item_counts)
        recent = [str(i) for i in payload.get("recent_impressions") or []][-layout.recent :]
        recent_idx, _ = encode_items(recent, model.index, cfg.model.id_buckets)
        by_value = request_user_item_counts(payload, layout, model.item_values, cand_idx, recent_idx)
        side = (side or {}) | {"target_user_item_counts": by_value}
    use_text = model.model.text_dim > 0
    cold = [i for i, row in enumerate(cand_idx) if row == UNKNOWN and use_text and texts[i] and str(texts[i]).strip()]
    sources = ["known" if row != UNKNOWN else "hashed" for row in cand_idx]
    for i in cold:
        sources[i] = "text"
    return Job(
        history=history,
        hist_idx=hist_idx,
        hist_bucket=hist_bucket,
        hist_age=hist_age,
        candidates=candidates,
        cand_idx=cand_idx,
        cand_bucket=cand_bucket,
        sources=sources,
        cold=cold,
        cold_texts=[str(texts[i]) for i in cold],
        explain=bool(payload.get("explain", False)),
        side=side,
    )


def batch_inputs(jobs: list[Job], text_dim: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The keyword arguments of `CTRModel.score_groups` for a batch of jobs: the B histories right-padded
    (B, L), every job's candidates one after the other (N,), and the job (`group`) each belongs to."""
    B, L = len(jobs), max(1, max(len(j.hist_idx) for j in jobs))
    hist = np.zeros((3, B, L), dtype=np.int64)  # idx, bucket, age; (B, L) each, right-padded
    for row, job in enumerate(jobs):
        n = len(job.hist_idx)
        hist[:, row, :n] = job.hist_idx, job.hist_bucket, job.hist_age
    counts = [len(j.cand_idx) for j in jobs]
    inputs = {
        "hist_idx": torch.from_numpy(hist[0]),
        "hist_bucket": torch.from_numpy(hist[1]),
        "hist_age": torch.from_numpy(hist[2]),
        "hist_len": torch.tensor([len(j.hist_idx) for j in jobs], dtype=torch.long),  # (B,)
        "target_idx": torch.from_numpy(np.concatenate([j.cand_idx for j in jobs]).astype(np.int64)),  # (N,)
        "target_bucket": torch.from_numpy(np.concatenate([j.cand_bucket for j in jobs]).astype(np.int64)),
        "group": torch.repeat_interleave(torch.arange(B), torch.tensor(counts)),  # (N,)
    }
    if text_dim and any(j.text is not None and j.cold for j in jobs):
        text = torch.zeros(sum(counts), text_dim)  # (N, Dt) embedded texts of cold candidates
        mask = torch.zeros(sum(counts), dtype=torch.bool)  # (N,) where a text replaces the table
        start = 0
        for job, count in zip(jobs, counts, strict=True):
            if job.text is not None and job.cold:
                rows = torch.tensor(job.cold, dtype=torch.long) + start
                text[rows] = torch.from_numpy(np.asarray(job.text, dtype=np.float32))
                mask[rows] = True
            start += count
        inputs |= {"target_text": text, "target_text_mask": mask}
    out: dict[str, Any] = {k: v.to(device) for k, v in inputs.items()}
    if jobs[0].side:  # one model per batch call: every job has the same side keys
        out["side"] = {
            key: torch.from_numpy(np.concatenate([j.side[key] for j in jobs])).to(device) for key in jobs[0].side
        }
    return out


@torch.inference_mode()
def score_jobs(model: CTRModel, jobs: list[Job], device: torch.device | str = "cpu") -> list[tuple[np.ndarray, Any]]:
    """(probabilities (C,), attention (C, n) or None) per job: the whole batch in one `score_groups` call."""
    logits, weights = model.score_groups(**batch_inputs(jobs, model.text_dim, device), return_attention=True)
    probs = torch.sigmoid(logits).float().cpu().numpy()  # (N,)
    out: list[tuple[np.ndarray, Any]] = []
    start = 0
    for job in jobs:
        C, n = len(job.cand_idx), len(job.hist_idx)
        attention = None
        if job.explain and model.attention is not None:
            attention = weights[start : start + C, :n].float().cpu().numpy()  # (C, n)
        out.append((probs[start : start + C], attention))
        start += C
    return out


def scored(result: tuple[np.ndarray, Any] | Exception) -> tuple[np.ndarray, Any]:
    """One job's result of `CTRScorer._score_items`: its (probabilities, attention), or its model's error raised."""
    if isinstance(result, Exception):
        raise result
    return result


def build_response(model: ServingModel, job: Job, probs: np.ndarray, attention: Any) -> dict[str, Any]:
    """A ScoreResponse-shaped dict, candidates in request order."""
    scores = probs.tolist()  # Python floats in one call, shared by `scores` and the items
    rows = attention.tolist() if attention is not None else None
    items = [
        {"item_id": item, "score": p, "source": source, "attention": rows[i] if rows is not None else None}
        for i, (item, p, source) in enumerate(zip(job.candidates, scores, job.sources, strict=True))
    ]
    return {
        "model": model.name,
        "version": model.version,
        "scores": scores,
        "items": items,
        "history": job.history if job.explain else None,
        "variant": job.variant,
        "request_id": job.request_id,
    }


def response_bytes(body: dict[str, Any]) -> bytes:
    """A response dict as JSON, once: the routes send these bytes as they are, so FastAPI neither
    re-validates the dict against the response model nor encodes it a second time. (Scores are finite
    sigmoid outputs, so no NaN reaches the encoder; ASCII escapes keep any echoed id encodable.)"""
    return json.dumps(body, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- deployments


def _in_replica() -> bool:
    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class ItemEncoder:
    """The BERT text encoder for cold-start candidates, with an LRU cache of text vectors.

    Concurrent cold-start requests are batched (`@serve.batch`): the unique uncached texts of a whole
    batch go through BERT in one call. BERT runs on one executor thread (a fast tokenizer must not be
    used from two threads at once), and the cache lock is held only for cache reads and writes, never
    across an encode, so cache hits of other requests are answered while BERT runs. Encoders are keyed
    by their settings, so a hot reload to a checkpoint embedded with another encoder needs no restart.
    """

    def __init__(self, cache_size: int = 10_000, torch_threads: int = 1) -> None:
        if torch_threads > 0:  # 0 = leave the process's setting (tests)
            torch.set_num_threads(torch_threads)
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._encoders: dict[tuple, Any] = {}
        self._lock = threading.Lock()  # the cache and its counters only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqctr-bert")
        self._batched = _in_replica()
        self.hits = self.misses = 0

    def _encoder(self, settings: tuple) -> Any:
        """The TextEncoder of `settings`, loaded on first use (on the BERT thread, so never twice)."""
        from seqctr.platform.data.embeddings import TextEncoder

        if settings not in self._encoders:
            name, max_length, pooling = settings
            self._encoders[settings] = TextEncoder(name, max_length=max_length, pooling=pooling, device="cpu")
        return self._encoders[settings]

    def _encode_many(self, requests: list[tuple[list[str], tuple]]) -> list[np.ndarray]:
        """(len(texts), Dt) vectors per (texts, settings) request; runs on the BERT thread."""
        with self._lock:
            wanted: dict[tuple, dict[str, None]] = {}
            for texts, settings in requests:
                missing = [t for t in dict.fromkeys(texts) if (settings, t) not in self._cache]
                self.hits += len(texts) - len(missing)
                self.misses += len(missing)
                wanted.setdefault(settings, {}).update(dict.fromkeys(missing))
        fresh: dict[tuple, np.ndarray] = {}
        for settings, texts in wanted.items():  # outside the lock: the slow part
            if texts:
                fresh.update(
                    zip(((settings, t) for t in texts), self._encoder(settings).encode(list(texts)), strict=True)
                )
        out = []
        with self._lock:
            for texts, settings in requests:
                keys = [(settings, t) for t in texts]
                out.append(np.stack([fresh[k] if k in fresh else self._cache[k] for k in keys]).astype(np.float32))
                for key in keys:  # refresh recency, insert new vectors
                    self._cache[key] = fresh.get(key, self._cache.get(key))
                    self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:  # evict the oldest
                self._cache.popitem(last=False)
        return out

    async def _on_bert_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def encode(self, texts: list[str], name: str, max_length: int, pooling: str) -> np.ndarray:
        """(len(texts), Dt) vectors of `texts` under the given encoder settings."""
        request = (list(texts), (name, max_length, pooling))
        if self._batched:
            return await self._encode_batch(request)
        [vectors] = await self._on_bert_thread(self._encode_many, [request])
        return vectors

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _encode_batch(self, requests: list[tuple[list[str], tuple]]) -> list[np.ndarray]:
        return await self._on_bert_thread(self._encode_many, requests)

    async def warm(self, name: str, max_length: int, pooling: str) -> int:
        """Load the encoder now (a scorer calls this after loading a model); returns its dimension."""
        return await self._on_bert_thread(lambda: self._encoder((name, max_length, pooling)).dim)

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._cache), "capacity": self._cache_size, "hits": self.hits, "misses": self.misses}


class CTRScorer:
    """Scores candidates with the served checkpoint; dynamic batching across concurrent requests.

    The model half of the `CTRScorer` deployment: seqctr/serving/app.py adds the HTTP routes to a
    subclass, so a request costs one Serve hop (proxy -> scorer), not two. As a plain class it runs
    without Serve (tests). `config` is the app's ExperimentConfig (serve + registry settings); the
    model comes from `reconfigure(user_config)`, which Serve calls at start and on every user_config
    change. `loader` is injectable so tests can pass a fake. The config arrives validated (the app
    builder's), and its `serve:` section alone sets the batch size and wait of `_score_batch`.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        encoder: Any = None,
        loader: Loader | None = None,
        torch_threads: int = 1,
    ) -> None:
        if torch_threads > 0:  # 0 = leave the process's setting (tests)
            torch.set_num_threads(torch_threads)
        self._cfg = config
        self._encoder = encoder  # DeploymentHandle to ItemEncoder (None: text candidates are hashed)
        self._loader = loader or load_model
        self._device = "cpu"
        self._current: ServingModel | None = None  # the single model; with variants, the primary's
        self._variants: VariantTable | None = None
        self._shadow_tasks: set[asyncio.Task] = set()  # held so they are not collected mid-flight
        self._max_shadow_tasks = 4 * self._cfg.serve.max_batch_size  # beyond this, a shadow is skipped
        self._shadow_counts: dict[str, Counter[str]] = {}  # variant -> outcome -> count, for info()
        serve_cfg = self._cfg.serve
        self._impressions = (
            ImpressionLog(
                serve_cfg.impressions,
                serve_cfg.impressions_flush_rows,
                serve_cfg.impressions_flush_s,
                serve_cfg.impressions_max_rows,
            )
            if serve_cfg.impressions
            else None
        )
        self._last_reload: dict[str, Any] | None = None
        self._reload_lock = asyncio.Lock()
        self._warming: asyncio.Future | None = None
        self._batched = _in_replica()  # @serve.batch needs a replica; plain-class tests score directly
        self._metrics = ServingMetrics() if self._batched else None  # Serve's custom metrics live in replicas
        # The forward runs here, off the event loop, so parsing the next requests overlaps the model;
        # one thread, so batches never compete for the replica's CPU share.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqctr-model")
        self._batch_sizes: Counter[int] = Counter()  # batches scored, by requests per batch
        self._score_batch.set_max_batch_size(self._cfg.serve.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self._cfg.serve.batch_wait_timeout_s)

    # -- model lifecycle

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the model named by user_config, then swap; on failure keep the old one (see module doc)."""
        spec = ModelSpec.model_validate(user_config)
        if spec.variants:
            async with self._reload_lock:
                table = await self._load_variants(spec)
            if table is not None:
                for model in {id(v.model): v.model for v in table}.values():
                    self._warming = asyncio.ensure_future(self._warm_encoder(model))
            return
        async with self._reload_lock:
            current = self._current
            try:
                new = await asyncio.to_thread(load_serving_model, spec, self._cfg, self._loader, self._device)
            except Exception as err:  # noqa: BLE001 - any load failure must leave the old model serving
                message = f"loading {spec.model} failed: {type(err).__name__}: {err}"
                logger.error("CTRScorer hot reload: %s", message)
                self._last_reload = {"uri": spec.model, "ok": False, "error": message, "at": _now()}
                if current is not None:
                    return
                if not spec.fallback:
                    raise RuntimeError(f"CTRScorer: no model to serve: {message}") from err
                new = await asyncio.to_thread(
                    load_serving_model, ModelSpec(model=spec.fallback), self._cfg, self._loader, self._device
                )
            else:
                self._last_reload = {"uri": spec.model, "ok": True, "error": None, "at": _now()}
            self._current = new  # one reference swap: in-flight requests keep the model they started with
            self._variants = None
            logger.info("CTRScorer serving %s %s from %s", new.name, new.version, new.checkpoint)
        # In the background: the scorer is ready without it, cold-start requests wait for it if needed.
        self._warming = asyncio.ensure_future(self._warm_encoder(new))

    def _loaded(self) -> dict[str, ServingModel]:
        """source -> model of everything loaded now, so a variant naming one of them loads nothing."""
        models = [v.model for v in self._variants] if self._variants is not None else []
        if self._current is not None:
            models.append(self._current)
        return {m.source: m for m in models}

    async def _load_variants(self, spec: ModelSpec) -> VariantTable | None:
        """Load the variants of `spec` beside the live ones and swap the table; None when it kept the old.

        A variant whose load fails keeps its previous model (same name), else its fallback; a shadow with
        neither is left out (requests never depend on it); a served one with neither keeps the whole old
        table (or, on a replica's first load, fails it, as a single model does)."""
        loaded, old = self._loaded(), self._variants
        variants, errors = [], []
        for name, vspec in spec.variants.items():
            model = loaded.get(vspec.source)
            if model is None:
                try:
                    model = await asyncio.to_thread(self._load_one, vspec.model, vspec.resolved)
                except Exception as err:  # noqa: BLE001 - any load failure must leave requests served
                    message = f"serve.variants.{name}: loading {vspec.model} failed: {type(err).__name__}: {err}"
                    logger.error("CTRScorer hot reload: %s", message)
                    errors.append(message)
                    previous = old.get(name) if old is not None else None
                    model = previous.model if previous is not None else None
                    if model is None and vspec.fallback:
                        try:
                            model = await asyncio.to_thread(self._load_one, vspec.fallback, None)
                        except Exception as fallback_err:  # noqa: BLE001 - reported with the first error
                            errors.append(f"serve.variants.{name}: fallback {vspec.fallback} failed: {fallback_err}")
                    if model is None and vspec.shadow:
                        continue
                    if model is None:
                        self._last_reload = self._reload_status(spec, errors)
                        if self._current is not None:
                            return None
                        raise RuntimeError(f"CTRScorer: no model to serve: {message}") from err
            variants.append(Variant(name, vspec, model))
        table = VariantTable.build(variants)
        self._variants, self._current = table, table.primary.model  # one swap each; requests keep theirs
        self._last_reload = self._reload_status(spec, errors)
        for v in table:
            logger.info(
                "CTRScorer variant %s (%s %.3g): %s %s",
                v.name,
                "shadow" if v.spec.shadow else "served",
                v.spec.weight,
                v.model.name,
                v.model.version,
            )
        return table

    def _load_one(self, model: str, resolved: str | None) -> ServingModel:
        return load_serving_model(ModelSpec(model=model, resolved=resolved), self._cfg, self._loader, self._device)

    @staticmethod
    def _reload_status(spec: ModelSpec, errors: list[str]) -> dict[str, Any]:
        uri = ", ".join(f"{name}={v.model}" for name, v in spec.variants.items())
        return {"uri": uri, "ok": not errors, "error": "; ".join(errors) or None, "at": _now()}

    async def _warm_encoder(self, model: ServingModel) -> None:
        if self._encoder is None or not model.model.text_dim:
            return
        try:
            dim = await self._encoder.warm.remote(**encoder_settings(model.config))
            if dim != model.model.text_dim:
                logger.error("ItemEncoder dim %s != model text dim %s", dim, model.model.text_dim)
        except Exception as err:  # noqa: BLE001 - cold start degrades to hashed ids, scoring goes on
            logger.error("ItemEncoder failed to load %s: %s", encoder_settings(model.config), err)

    def check_health(self) -> None:
        if self._current is None:
            raise RuntimeError("CTRScorer has no model loaded")

    def info(self) -> dict[str, Any]:
        if self._current is None:
            raise RuntimeError("CTRScorer has no model loaded")
        out = self._current.describe()
        out["config"]["serve"] = self._cfg.serve.model_dump()
        out["last_reload"] = self._last_reload
        out["batch_sizes"] = dict(sorted(self._batch_sizes.items()))
        table = self._variants
        out["variants"] = [v.describe() for v in table] if table is not None else None
        out["shadows"] = {name: dict(counts) for name, counts in sorted(self._shadow_counts.items())}
        out["impressions"] = self._impressions.stats() if self._impressions is not None else None
        return out

    # -- scoring

    async def score(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A ScoreResponse dict for `ScoreRequest.payload()` (the handle API; the HTTP routes call
        `score_job` and serialise the answer themselves)."""
        body, job = await self.score_job(payload)
        job.times.stop("response")
        self.record(job, body)
        return body

    async def score_job(self, payload: dict[str, Any], times: StageTimes | None = None) -> tuple[dict[str, Any], Job]:
        """(ScoreResponse dict, the encoded job with its stage times so far); `times` carries the stages
        before this call (parse), and its clock runs on into `response` for the caller to stop."""
        table, current, variant = self._variants, self._current, None
        if table is not None:
            variant = table.route(payload.get("user_id"))
            current = variant.model
        if current is None:
            raise RuntimeError("CTRScorer has no model loaded")
        times = times or StageTimes()
        job = prepare_job(current, payload)
        job.times = times
        job.request_id = payload.get("request_id") or uuid.uuid4().hex
        job.user_id = payload.get("user_id")
        if variant is not None:
            job.variant = variant.name
            job.shadows = table.shadows_for(payload.get("user_id"))
            if job.shadows:
                job.payload, job.encoder = payload, encoder_settings(current.config)
        times.stop("encode")
        if job.cold:
            job.text = await self._embed_cold(current, job)
            times.stop("embed")
        if self._batched:
            probs, attention = scored(await self._score_batch((current, job)))
        else:
            self._batch_sizes[1] += 1
            [result] = self._score_items([(current, job)])
            probs, attention = scored(result)
            times.stop("model")
        return build_response(current, job, probs, attention), job

    def record(self, job: Job, body: dict[str, Any]) -> None:
        """Export a finished request's stage times and candidate sources (a no-op outside a replica)."""
        if self._metrics is not None:
            self._metrics.record_request(job.times, job.sources, body["model"], body["version"], job.variant)
        if self._impressions is not None:
            items = [item["item_id"] for item in body["items"]]
            self._impressions.add(
                job.request_id, job.user_id, job.variant or "", body["version"], "served", items, body["scores"]
            )
        if job.shadows:
            self._start_shadows(job, body)

    # -- shadow scoring

    def _start_shadows(self, job: Job, body: dict[str, Any]) -> None:
        """One background task per sampled shadow; none awaits it, so the response never waits."""
        for variant in job.shadows:
            if len(self._shadow_tasks) >= self._max_shadow_tasks:  # bounded: overload skips shadows first
                self._count_shadow(variant.name, "skipped")
                continue
            task = asyncio.get_running_loop().create_task(self._shadow_score(variant, job, body))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_score(self, variant: Variant, served: Job, body: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # let the route hand its response over first
        try:
            model = variant.model
            job = prepare_job(model, {**(served.payload or {}), "explain": False})
            if job.cold:
                same_text = served.text is not None and served.cold == job.cold
                same_text = same_text and encoder_settings(model.config) == served.encoder
                job.text = served.text if same_text else await self._embed_cold(model, job)
            if self._batched:
                probs, _ = scored(await self._score_batch((model, job)))
            else:
                [result] = self._score_items([(model, job)])
                probs, _ = scored(result)
            scores = probs.tolist()
            logger.info(shadow_record(served.request_id, body, variant, scores))
            if self._impressions is not None:
                self._impressions.add(
                    served.request_id, served.user_id, variant.name, model.version, "shadow", job.candidates, scores
                )
            self._count_shadow(variant.name, "scored")
        except Exception as err:  # noqa: BLE001 - a shadow failure is logged, never a failed request
            logger.warning(
                "shadow %s failed on request %s: %s: %s", variant.name, served.request_id, type(err).__name__, err
            )
            self._count_shadow(variant.name, "failed")

    def close_impressions(self) -> None:
        """Write the impression log's buffered rows and wait for them (replica shutdown; tests)."""
        log = getattr(self, "_impressions", None)  # None too when __init__ stopped before creating it
        if log is not None:
            self._impressions = None
            log.close()

    def __del__(self) -> None:
        # Serve calls __del__ when it shuts a replica down: the buffered impressions are written first.
        try:
            self.close_impressions()
        except Exception as err:  # noqa: BLE001 - shutdown goes on; the rows are lost and said so
            logger.error("impression log: final write failed: %s", err)

    async def shadows_done(self) -> None:
        """Wait for the shadow scorings in flight (a drain before shutdown; tests of the plain class)."""
        while self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

    def _count_shadow(self, name: str, outcome: str) -> None:
        self._shadow_counts.setdefault(name, Counter())[outcome] += 1
        if self._metrics is not None:
            self._metrics.record_shadow(name, outcome)

    async def _embed_cold(self, model: ServingModel, job: Job) -> np.ndarray | None:
        """Text vectors of the job's cold candidates; on any encoder failure they fall back to hashed."""
        if self._encoder is not None:
            try:
                vectors = await self._encoder.encode.remote(job.cold_texts, **encoder_settings(model.config))
                if vectors.shape == (len(job.cold), model.model.text_dim):
                    return vectors
                logger.error(
                    "ItemEncoder returned %s, model expects (%d, %d)",
                    vectors.shape,
                    len(job.cold),
                    model.model.text_dim,
                )
            except Exception as err:  # noqa: BLE001 - degrade, never fail the request
                logger.error("ItemEncoder failed; scoring %d text candidates by hashed id: %s", len(job.cold), err)
        for i in job.cold:
            job.sources[i] = "hashed"
        job.cold, job.cold_texts = [], []
        return None

    @serve.batch  # size and wait: set from serve: in __init__, never from here
    async def _score_batch(self, items: list[tuple[ServingModel, Job]]) -> list[tuple[np.ndarray, Any] | Exception]:
        for _, job in items:
            job.times.stop("batch_wait")
        self._batch_sizes[len(items)] += 1  # on the event loop, where info() reads it
        if self._metrics is not None:
            self._metrics.record_batch(len(items))
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._score_items, items)
        for _, job in items:
            job.times.stop("model")
        return results

    def _score_items(self, items: list[tuple[ServingModel, Job]]) -> list[tuple[np.ndarray, Any] | Exception]:
        """Score a batch; a batch can hold several models (a hot swap, variants, shadows), each scores its
        own jobs. A model that raises gets its exception as its jobs' results (raised by `scored`), so a
        broken shadow or challenger never fails the other requests of its batch."""
        results: list[Any] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        for positions in groups.values():
            model = items[positions[0]][0]
            try:
                scored: list[Any] = score_jobs(model.model, [items[i][1] for i in positions], self._device)
            except Exception as err:  # noqa: BLE001 - handed to this model's callers only
                scored = [err] * len(positions)
            for i, result in zip(positions, scored, strict=True):
                results[i] = result
        return results
