"""The HTTP app: FastAPI routes on the CTRScorer deployment, and the typed builder Serve runs.

    serve run configs/serve.yaml                               # Ray's own tools (serve deploy too)
    seqctr serve --model registry://seqctr@production          # the same app, plus hot reload

`build_app(args)` is the builder a Serve config names (`import_path: seqctr.serving.app:build_app`);
Serve validates `args` against `AppArgs`, once: they carry the whole experiment config (`experiment`,
what `seqctr serve` sends after reading YAML + --set), or name a YAML + overrides that the builder reads
(`serve run configs/serve.yaml`). The validated ExperimentConfig object then goes to the replicas as is.
The graph it returns:

    HTTP -> CTRScorer (FastAPI ingress + model: /v1/score /v1/rank /v1/model /docs; autoscaled, batched)
              -> ItemEncoder (BERT for cold-start texts, through a deployment handle)

The routes live on the scorer itself rather than on a separate ingress deployment: on 2 CPUs each
Serve hop costs more CPU than scoring a request (measured by bench/serve_latency.py), and a separate
ingress would add one to every request.

Sizing and overload (seqctr/serving/sizing.py): each replica asks for `serve.replica_cpus` (scorer) and
`serve.encoder_cpus` (encoder), both autoscaled between serve.min_replicas and serve.max_replicas; the
builder warns when max_replicas of them cannot fit the cluster's CPUs. Beyond max_ongoing_requests per
replica and `serve.max_queued_requests` waiting, Serve's proxy answers 503 at once, which the client
retries with backoff; the app's own 500s carry X-Seqctr-No-Retry. Every request's stage times go to
Serve custom metrics (seqctr/serving/telemetry.py, deploy/grafana/seqctr_serving.json).

Champion and challenger: with `serve.variants`, the user_config holds `variants` (name -> model, weight,
shadow; seqctr/serving/variants.py) instead of `model`, so weights and models change the same way.

The model URI goes into CTRScorer's `user_config`, so changing it (a Serve config's
`deployments: [{name: CTRScorer, user_config: {model: ...}}]`, or `seqctr serve --model ...` against a
running app) reconfigures the live replicas in place instead of restarting them.

No `from __future__ import annotations` here: Serve re-wraps the route methods, and FastAPI must see
the real request classes (not strings) to read them from the body.
"""

import hmac
import json
import logging
import os
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from seqctr.platform.config import ConfigError, ExperimentConfig, load_config, resolve_paths
from seqctr.platform.model.side import FeatureFieldError
from seqctr.serving.deployments import CTRScorer, ItemEncoder, Job, Loader, pin_model, response_bytes
from seqctr.serving.schemas import (
    API_KEY_HEADER,
    NO_RETRY_HEADER,
    ErrorResponse,
    ModelInfo,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    candidates_error,
    validation_error,
)
from seqctr.serving.sizing import (
    autoscaling_config,
    max_ongoing_requests,
    replica_sizes,
    warn_if_unplaceable,
)
from seqctr.serving.telemetry import StageTimes
from seqctr.serving.variants import variant_specs

logger = logging.getLogger("ray.serve")

fastapi_app = FastAPI(
    title="seqctr CTR endpoint",
    version="1",
    description="Click probabilities of candidate items given a user's click history (BERT + LSTM).",
)
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Required when serve.api_key_env is set."
)


# ----------------------------------------------------------------------------- request guards


def is_json_media(content_type: str | None) -> bool:
    """Whether a Content-Type header declares JSON (application/json, application/*+json); a request
    without one counts as JSON, as FastAPI reads it so."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodySizeLimit:
    """ASGI middleware: a request body over `app.state.max_body_bytes` gets 413 before it is parsed.

    Checks Content-Length first, then counts the bytes actually received (chunked bodies), so a client
    cannot stream past the limit by leaving the header out. A JSON body that is not UTF-8 gets a 422 here
    too: FastAPI would answer it with a bare 400 "There was an error parsing the body".
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # the start of the `parse` stage (telemetry.py)
            scope.setdefault("state", {})[ARRIVED] = time.perf_counter()
        limit = getattr(scope.get("app").state, "max_body_bytes", None) if scope.get("app") else None
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(scope, receive, send, limit)
        chunks: list[bytes] = []  # joined once: `body += chunk` would copy the body again per chunk
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                return await self._reject(scope, receive, send, limit)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        scope["state"][RECEIVED] = time.perf_counter()
        content_type = headers.get(b"content-type")
        if is_json_media(content_type.decode("latin-1") if content_type is not None else None):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as err:
                msg = f"JSON decode error: the body is not UTF-8 ({err.reason} at byte {err.start})"
                error = validation_error(("body", err.start), msg, "json_invalid")
                return await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _reject(scope: dict, receive: Any, send: Any, limit: int) -> None:
        error = validation_error(
            ("body",), f"request body larger than {limit} bytes (serve.max_body_bytes)", "too_large"
        )
        await JSONResponse({"detail": [error]}, status_code=413)(scope, receive, send)


ARRIVED = "seqctr_arrived"  # scope["state"] key: perf_counter() when the replica's ASGI app got the request
RECEIVED = "seqctr_received"  # ... and when its whole body had arrived
fastapi_app.add_middleware(BodySizeLimit)


def request_times(http: Request) -> StageTimes:
    """Stage times of a request: `receive` as the middleware timed it, `parse` running since."""
    times = StageTimes()
    state = http.scope.get("state") or {}
    arrived, received = state.get(ARRIVED), state.get(RECEIVED)
    if arrived is not None and received is not None:
        times.add("receive", (received - arrived) * 1000)
    if received is not None or arrived is not None:
        times.start(received if received is not None else arrived)
    return times


@fastapi_app.exception_handler(RequestValidationError)
async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, written with ASCII escapes. Why: an error echoes its input, and an input holding an
    unpaired surrogate ("\\ud800", valid JSON) cannot be encoded as UTF-8, which turned the 422 into a 500."""
    body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def read_api_key(env_name: str) -> str | None:
    """The API key from the environment variable `serve.api_key_env` names; None when it names none.
    Fails closed: a configured but unset variable is an error, never an open endpoint."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            f"serve.api_key_env={env_name!r} (flag --set serve.api_key_env=...) names an environment "
            "variable that is not set; set it or leave serve.api_key_env empty"
        )
    return value


# The guards are async: FastAPI runs a sync dependency in its threadpool, a hand-off per request each.
async def require_api_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    expected = getattr(request.app.state, "api_key", None)
    if expected is None:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        error = validation_error(
            ("header", API_KEY_HEADER), f"missing or wrong {API_KEY_HEADER} header", "unauthorized"
        )
        raise HTTPException(status_code=401, detail=[error], headers={"WWW-Authenticate": "ApiKey"})


async def require_json(request: Request) -> None:
    """415 for a body declared as anything but JSON (a body without Content-Type is read as JSON).

    Why: FastAPI reads a body of another media type as raw bytes and answers a 422 about a missing object,
    which hides the real mistake (e.g. `curl -d`, which sends form encoding)."""
    declared = request.headers.get("content-type")
    if is_json_media(declared):
        return
    media = (declared or "").split(";", 1)[0].strip() or "nothing"
    msg = f"Content-Type must be application/json, got {media}"
    error = validation_error(("header", "Content-Type"), msg, "media_type")
    raise HTTPException(status_code=415, detail=[error])


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Every status the routes answer besides 200 and 422, documented so clients (and schema checks) know them.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error(f"Missing or wrong {API_KEY_HEADER} header (when serve.api_key_env is set)."),
    413: _error("Request body larger than serve.max_body_bytes."),
    500: _error(f"Scoring failed; the message says why (with header {NO_RETRY_HEADER}: the same request fails again)."),
    503: _error("No model loaded yet, or every replica busy and serve.max_queued_requests queued: retry later."),
}
POST_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 415: _error("Content-Type is not application/json.")}
POST_GUARDS = [Depends(require_api_key), Depends(require_json)]

# ----------------------------------------------------------------------------- the deployment


@serve.deployment(name="CTRScorer", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(fastapi_app)
class CTRScorerDeployment(CTRScorer):
    """The CTRScorer with its HTTP routes: the FastAPI ingress and the model in one replica, so each
    request is one Serve hop; Serve autoscales it. Also callable through a handle (`info`, `score`)."""

    def __init__(
        self,
        config: ExperimentConfig,
        encoder: Any = None,
        loader: Loader | None = None,
        torch_threads: int = 1,
    ) -> None:
        super().__init__(config, encoder, loader, torch_threads)
        limits = self._cfg.serve
        self._max_candidates = limits.max_candidates
        fastapi_app.state.max_body_bytes = limits.max_body_bytes
        fastapi_app.state.api_key = read_api_key(limits.api_key_env)

    def _check_limits(self, request: ScoreRequest) -> None:
        error = candidates_error(len(request.candidates), self._max_candidates)
        if error is not None:
            raise RequestValidationError([error])

    async def _score_http(self, request: ScoreRequest, http: Request) -> tuple[dict[str, Any], Job]:
        times = request_times(http)
        self._check_limits(request)
        payload = request.payload()
        payload["request_id"] = http.headers.get("x-request-id")  # else the scorer makes one
        times.stop("parse")
        try:
            return await self.score_job(payload, times)
        except FeatureFieldError as err:  # a side field this model cannot read: the caller's error
            raise RequestValidationError([validation_error(("body", *err.loc), str(err), "value_error")]) from None
        except Exception as err:  # noqa: BLE001 - one logged line, a 500 that says what failed
            logger.exception("request failed")
            detail = f"scoring failed: {type(err).__name__}: {err}"
            raise HTTPException(status_code=500, detail=detail, headers={NO_RETRY_HEADER: "1"}) from err

    def _respond(self, body: dict[str, Any], job: Job, scored: dict[str, Any]) -> Response:
        content = response_bytes(body)
        job.times.stop("response")
        self.record(job, scored)
        return Response(content, media_type="application/json")

    @fastapi_app.post("/v1/score", response_model=ScoreResponse, dependencies=POST_GUARDS, responses=POST_ERRORS)
    async def http_score(self, request: ScoreRequest, http: Request) -> Response:
        """Click probabilities of every candidate, in candidate order."""
        scored, job = await self._score_http(request, http)
        return self._respond(scored, job, scored)

    @fastapi_app.post("/v1/rank", response_model=RankResponse, dependencies=POST_GUARDS, responses=POST_ERRORS)
    async def http_rank(self, request: RankRequest, http: Request) -> Response:
        """The k best candidates by click probability, best first (ties keep request order)."""
        scored, job = await self._score_http(request, http)
        items = scored["items"]
        order = sorted(range(len(items)), key=lambda i: -items[i]["score"])[: request.k]
        ranked = {k: v for k, v in scored.items() if k != "scores"} | {"items": [items[i] for i in order]}
        return self._respond(ranked, job, scored)

    @fastapi_app.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(require_api_key)], responses=ERRORS)
    async def http_model(self) -> dict[str, Any]:
        """The served model: name, version, metrics, config summary and the latest reload attempt."""
        try:
            return self.info()
        except RuntimeError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None


# ----------------------------------------------------------------------------- the builder


class AppArgs(BaseModel):
    """Arguments of `build_app` (the `args:` of a Serve config file): the experiment config, either whole
    (`experiment`) or as a YAML file plus overrides read once by the builder."""

    model_config = ConfigDict(extra="forbid")

    experiment: ExperimentConfig | None = Field(
        None, description="The whole experiment config (ExperimentConfig.to_dict()), as `seqctr serve` sends it."
    )
    config: str | None = Field(
        None,
        description="Or an experiment YAML (default configs/default.yaml), read by the builder; a relative path "
        "is relative to the builder's working directory (the repository root for `serve run`).",
    )
    overrides: list[str] = Field(
        default_factory=list, description="Dotted overrides of `config`, e.g. serve.max_batch_size=8."
    )
    model: str | None = Field(None, description="registry://NAME@ALIAS or a checkpoint folder (default serve.model).")
    scorer_cpus: float | None = Field(
        None, gt=0, description="CPUs per CTRScorer replica (default serve.replica_cpus; torch threads follow)."
    )
    encoder_cpus: float | None = Field(
        None, ge=0, description="CPUs per ItemEncoder replica (default serve.encoder_cpus)."
    )

    @model_validator(mode="after")
    def _one_config_source(self) -> "AppArgs":
        if self.experiment is not None and (self.config or self.overrides):
            raise ValueError("give either `experiment` (a whole config) or `config` + `overrides`, not both")
        return self


def app_config(args: AppArgs) -> ExperimentConfig:
    """The experiment config the app serves: `experiment` as validated with the args, or `config` +
    `overrides` read here (local paths made absolute); then `model`. No path is searched for."""
    cfg = args.experiment or resolve_paths(load_config(args.config, args.overrides))
    if args.model:
        cfg = cfg.with_overrides({"serve.model": args.model})
    if cfg.serve.min_replicas > cfg.serve.max_replicas:
        raise ConfigError(
            f"serve.min_replicas={cfg.serve.min_replicas} > serve.max_replicas={cfg.serve.max_replicas} "
            "(flags --set serve.min_replicas / serve.max_replicas)"
        )
    return cfg


def variants_user_config(cfg: ExperimentConfig, strict: bool = True) -> dict[str, Any]:
    """CTRScorer's user_config for cfg.serve.variants, each variant pinned like a single model (strict: an
    unknown registry ref or missing folder is a ConfigError naming serve.variants.NAME.model)."""
    variants: dict[str, Any] = {}
    for name, spec in variant_specs(cfg).items():
        entry = spec.model_dump(exclude_none=True)
        try:
            entry["resolved"] = pin_model(spec.model, cfg)
        except Exception as err:  # noqa: BLE001 - registry and filesystem errors alike
            message = f"serve.variants.{name}.model={spec.model}: {type(err).__name__}: {err}"
            if strict:
                raise ConfigError(message) from err
            logger.warning("%s (not pinned at build time)", message)
        variants[name] = entry
    return {"variants": variants}


def model_user_config(cfg: ExperimentConfig, fallback: str | None = None, strict: bool = True) -> dict[str, Any]:
    """CTRScorer's user_config for cfg.serve.model, pinned to what it names now (see ModelSpec); with
    serve.variants, for those instead (`fallback` is then unused: each variant keeps its own model).

    Not strict (the builder): a URI that cannot be pinned here is left to the replicas, whose load error
    Serve reports, since a Serve config's `user_config` override may replace this default anyway."""
    if cfg.serve.variants:
        return variants_user_config(cfg, strict)
    out: dict[str, Any] = {"model": cfg.serve.model}
    try:
        out["resolved"] = pin_model(cfg.serve.model, cfg)
    except Exception as err:  # noqa: BLE001 - registry and filesystem errors alike
        if strict:
            raise
        logger.warning("serve.model=%s not pinned at build time: %s", cfg.serve.model, err)
    if fallback:
        out["fallback"] = fallback
    return out


def make_app(
    cfg: ExperimentConfig,
    *,
    loader: Loader | None = None,
    scorer_cpus: float | None = None,
    encoder_cpus: float | None = None,
    user_config: dict[str, Any] | None = None,
) -> Application:
    """The deployment graph for `cfg`; `loader` replaces the checkpoint loader (tests pass a fake).

    Replica CPUs default to `serve.replica_cpus` / `serve.encoder_cpus` (torch threads to match); when
    `serve.max_replicas` of them cannot fit the connected cluster's CPUs, a warning says so here, at
    build time (the build of `serve run`/`serve deploy`/`seqctr serve`, whose driver prints it)."""
    serve_cfg = cfg.serve
    sizes = replica_sizes(serve_cfg, scorer_cpus, encoder_cpus)
    warn_if_unplaceable(serve_cfg, sizes)
    autoscaling = autoscaling_config(serve_cfg)
    encoder = ItemEncoder.options(
        autoscaling_config=autoscaling, ray_actor_options={"num_cpus": sizes.encoder_cpus}
    ).bind(serve_cfg.encoder_cache_size, sizes.encoder_threads)
    scorer_options: dict[str, Any] = {"num_cpus": sizes.scorer_cpus}
    key_env = serve_cfg.api_key_env
    if key_env and os.environ.get(key_env):
        # The replicas may not inherit this process's environment (a cluster): hand the key over.
        scorer_options["runtime_env"] = {"env_vars": {key_env: os.environ[key_env]}}
    return CTRScorerDeployment.options(
        autoscaling_config=autoscaling,
        max_ongoing_requests=max_ongoing_requests(serve_cfg),
        # Beyond this many waiting requests the proxy answers 503 at once instead of queueing unboundedly.
        max_queued_requests=serve_cfg.max_queued_requests,
        user_config=user_config or model_user_config(cfg, strict=False),
        ray_actor_options=scorer_options,
    ).bind(cfg, encoder, loader, sizes.scorer_threads)


def build_app(args: AppArgs) -> Application:
    """The Serve application builder named by configs/serve.yaml (`import_path` + `args`)."""
    if isinstance(args, dict):  # called directly rather than by Serve
        args = AppArgs.model_validate(args)
    cfg = app_config(args)
    read_api_key(cfg.serve.api_key_env)  # fail at deploy time, not in a replica crash loop
    return make_app(cfg, scorer_cpus=args.scorer_cpus, encoder_cpus=args.encoder_cpus)
