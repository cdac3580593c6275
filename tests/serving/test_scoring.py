"""The scorer without Ray: request encoding, batched scoring, hot-reload semantics, quantisation, the
encoder cache, the schemas, the client's retries and the app builder's inputs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from serving_helpers import offline_scores, tiny_serving_config

from seqctr.cli.serve import connect_ray, running_cluster, serve_args
from seqctr.platform.config import CONFIGS_DIR, ConfigError, ExperimentConfig
from seqctr.platform.data.embeddings import TextEncoder
from seqctr.platform.model.predictor import load_model
from seqctr.serving.app import AppArgs, app_config, build_app, read_api_key
from seqctr.serving.client import CTRClient, CTRClientError
from seqctr.serving.deployments import CTRScorer, ItemEncoder, ModelSpec, prepare_job, score_jobs
from seqctr.serving.schemas import RankRequest, ScoreRequest, candidates_error
from seqctr.serving.sizing import autoscaling_config

Scorer = CTRScorer  # the plain class (app.py adds the routes): no Serve needed
HISTORY = [f"i{k}" for k in range(14)]
CANDIDATES = ["i1", "i20", "unseen-x", "i7"]


def run(coro):
    return asyncio.run(coro)


class _Remote:
    """Stands in for a DeploymentHandle method: `.remote(...)` returns an awaitable."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        async def call():
            return self.fn(*args, **kwargs)

        return call()


def make_scorer(checkpoint, encoder=None, loader=None, *overrides: str):
    cfg = tiny_serving_config(*overrides)
    scorer = Scorer(cfg, encoder, loader, torch_threads=0)
    run(scorer.reconfigure({"model": str(checkpoint)}))
    return scorer


@pytest.mark.parametrize("which", ["a", "b"], ids=["attention", "default-no-attention"])
def test_scores_equal_the_offline_predictor(checkpoints, which):
    scorer = make_scorer(checkpoints[which])
    for history in (HISTORY, HISTORY[:3], [], ["nobody-knows", "i2"]):
        out = run(scorer.score({"history": history, "candidates": CANDIDATES}))
        np.testing.assert_allclose(out["scores"], offline_scores(checkpoints[which], history, CANDIDATES), atol=1e-5)
    assert [i["source"] for i in out["items"]] == ["known", "known", "hashed", "known"]
    assert scorer.info()["batch_sizes"] == {1: 4}  # the plain class scores each request alone


def test_click_timestamps_score_as_the_offline_predictor(checkpoints):
    """Click ages reach the model as training computes them, cut with the history to max_seq_len."""
    scorer = make_scorer(checkpoints["a"])
    now = 1_717_000_000
    stamps = [now - 86_400 * (14 - k) for k in range(14)]  # one click a day; the last one a day old
    stamps[-2:] = [now - 30, now - 5]  # ... but the two most recent are from this session
    clicks = [{"item_id": item, "timestamp": ts} for item, ts in zip(HISTORY, stamps, strict=True)]
    body = ScoreRequest(history=clicks, timestamp=now, candidates=CANDIDATES).payload()
    timed = run(scorer.score(body))["scores"]
    expected = offline_scores(checkpoints["a"], HISTORY, CANDIDATES, stamps, now)
    np.testing.assert_allclose(timed, expected, atol=1e-5)
    blind = run(scorer.score({"history": HISTORY, "candidates": CANDIDATES}))["scores"]
    assert not np.allclose(timed, blind, atol=1e-4)  # the ages matter
    job = prepare_job(scorer._current, {**body, "timestamp": None})  # no request time: the server's clock
    assert job.hist_age.tolist()[-1] > 2 and len(job.hist_age) == 10
    # Only some clicks timed: the others' ages are unknown (1), the timed ones as before.
    mixed = ScoreRequest(history=[*HISTORY[:-1], clicks[-1]], timestamp=now, candidates=CANDIDATES).payload()
    assert prepare_job(scorer._current, mixed).hist_age.tolist() == [1] * 9 + [4]  # 5 s: 2 + floor(log2(6))


def forward_alone(model, job) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (C,), weights (C, n)) of one job by the model's forward() on the expanded batch."""
    C = len(job.candidates)

    def rows(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.long).reshape(1, -1).expand(C, -1)  # (C, n)

    batch = {
        "hist_idx": rows(job.hist_idx),
        "hist_bucket": rows(job.hist_bucket),
        "hist_age": rows(job.hist_age),
        "hist_len": torch.full((C,), len(job.hist_idx)),
        "target_idx": torch.tensor(job.cand_idx),
        "target_bucket": torch.tensor(job.cand_bucket),
    }
    if job.text is not None:
        text, mask = torch.zeros(C, model.text_dim), torch.zeros(C, dtype=torch.bool)
        text[job.cold], mask[job.cold] = torch.tensor(job.text), True
        batch |= {"target_text": text, "target_text_mask": mask}
    with torch.inference_mode():
        logits, weights = model(batch, return_attention=True)
    return torch.sigmoid(logits).numpy(), weights.numpy()


@pytest.mark.parametrize("which", ["a", "b"], ids=["attention", "default-no-attention"])
def test_one_batch_of_many_requests_equals_each_alone(checkpoints, which):
    """Jobs of different history lengths (some empty), candidate counts and cold texts, in one batch,
    against the model's forward() on each job alone."""
    model = make_scorer(checkpoints[which])._current
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(12):
        candidates = [*CANDIDATES[: 1 + k % 4], "cold-x"]
        texts = [None] * (len(candidates) - 1) + (["a text"] if k % 3 == 0 else [None])
        jobs.append(
            prepare_job(model, {"history": HISTORY[:k], "candidates": candidates, "texts": texts, "explain": True})
        )
        if jobs[-1].cold:
            jobs[-1].text = rng.normal(size=(1, model.model.text_dim)).astype(np.float32)
    assert sum(bool(j.cold) for j in jobs) == 4
    together = score_jobs(model.model, jobs)
    for job, (probs, attention) in zip(jobs, together, strict=True):
        alone, weights = forward_alone(model.model, job)
        np.testing.assert_allclose(probs, alone, atol=1e-6)
        if model.model.attention is None:
            assert attention is None  # explain has nothing to show without target attention
            continue
        assert attention.shape == (len(job.candidates), len(job.history))
        np.testing.assert_allclose(attention, weights[:, : len(job.history)], atol=1e-6)
        if job.history:
            np.testing.assert_allclose(attention.sum(1), 1.0, atol=1e-5)


def test_history_is_cut_to_the_most_recent(checkpoints):
    model = make_scorer(checkpoints["a"])._current
    job = prepare_job(model, {"history": HISTORY, "candidates": ["i1"]})
    assert job.history == HISTORY[-10:] and len(job.hist_idx) == 10


def test_failed_reload_keeps_the_old_model(checkpoints):
    calls = []

    def loader(path, device):
        calls.append(path)
        if "broken" in path:
            raise FileNotFoundError(f"checkpoint {path}: missing file model.safetensors")
        return load_model(path, device)

    scorer = make_scorer(checkpoints["a"], None, loader)
    before = run(scorer.score({"history": HISTORY, "candidates": CANDIDATES}))
    run(scorer.reconfigure({"model": "/nowhere/broken"}))
    info = scorer.info()
    assert info["checkpoint"] == str(checkpoints["a"])
    assert info["last_reload"]["ok"] is False and "missing file model.safetensors" in info["last_reload"]["error"]
    assert run(scorer.score({"history": HISTORY, "candidates": CANDIDATES}))["scores"] == before["scores"]
    run(scorer.reconfigure({"model": str(checkpoints["b"])}))
    assert scorer.info()["checkpoint"] == str(checkpoints["b"]) and scorer.info()["last_reload"]["ok"] is True


def test_new_replica_falls_back_when_its_model_fails(checkpoints):
    cfg = tiny_serving_config()
    scorer = Scorer(cfg, torch_threads=0)
    run(scorer.reconfigure({"model": "/nowhere/broken", "fallback": str(checkpoints["a"])}))
    assert scorer.info()["checkpoint"] == str(checkpoints["a"]) and scorer.info()["last_reload"]["ok"] is False
    with pytest.raises(RuntimeError, match="no model to serve.*nowhere"):
        run(Scorer(cfg, torch_threads=0).reconfigure({"model": "/nowhere/broken"}))
    with pytest.raises(RuntimeError, match="no model loaded"):
        Scorer(cfg, torch_threads=0).check_health()
    with pytest.raises(ValidationError, match="modle"):
        ModelSpec.model_validate({"modle": "x"})


def test_cold_start_text_goes_through_the_encoder_and_degrades_to_hashed(checkpoints):
    encoder = TextEncoder("tiny", max_length=16)
    calls = []

    def encode(texts, name, max_length, pooling):
        calls.append((texts, name, max_length, pooling))
        return encoder.encode(texts)

    handle = SimpleNamespace(encode=_Remote(encode), warm=_Remote(lambda **_: encoder.dim))
    scorer = make_scorer(checkpoints["a"], handle)
    body = {"history": HISTORY, "candidates": ["i1", "new-1", "i2"], "texts": [None, "blue mug", "ignored"]}
    out = run(scorer.score(body))
    assert [i["source"] for i in out["items"]] == ["known", "text", "known"]
    assert calls == [(["blue mug"], "tiny", 16, "mean")]  # known ids never reach the encoder

    def broken(*_args, **_kwargs):
        raise ConnectionError("encoder replica down")

    handle.encode = _Remote(broken)
    degraded = run(scorer.score(body))
    assert [i["source"] for i in degraded["items"]] == ["known", "hashed", "known"]
    hashed = run(scorer.score({"history": HISTORY, "candidates": ["i1", "new-1", "i2"]}))
    assert degraded["scores"] == hashed["scores"]


def test_int8_quantisation_stays_close_to_fp32(checkpoints):
    fp32 = make_scorer(checkpoints["a"])
    int8 = make_scorer(checkpoints["a"], None, None, "serve.quantize=int8")
    assert int8.info()["quantized"] == "int8"
    assert type(int8._current.model.encoder.rnn).__module__ == "torch.ao.nn.quantized.dynamic.modules.rnn"
    body = {"history": HISTORY, "candidates": [f"i{k}" for k in range(40)]}
    a, b = run(fp32.score(body))["scores"], run(int8.score(body))["scores"]
    np.testing.assert_allclose(a, b, atol=0.02)
    assert np.corrcoef(a, b)[0, 1] > 0.95


def test_item_encoder_caches_recent_texts():
    enc = ItemEncoder.func_or_class(cache_size=2, torch_threads=0)
    reference = TextEncoder("tiny", max_length=16)
    out = run(enc.encode(["a b", "c d", "a b"], "tiny", 16, "mean"))
    np.testing.assert_allclose(out, reference.encode(["a b", "c d", "a b"]), atol=1e-5)
    assert enc.cache_info() == {"size": 2, "capacity": 2, "hits": 1, "misses": 2}
    run(enc.encode(["e f"], "tiny", 16, "mean"))  # evicts the least recently used ("c d")
    run(enc.encode(["a b"], "tiny", 16, "mean"))
    assert enc.cache_info()["hits"] == 2
    run(enc.encode(["c d"], "tiny", 16, "mean"))
    assert enc.cache_info()["misses"] == 4


def test_item_encoder_batch_embeds_each_new_text_once():
    """A batch of concurrent cold-start requests (what @serve.batch hands over) goes through BERT once
    for the unique uncached texts of all of them; each request gets its own vectors back, in order."""
    enc = ItemEncoder.func_or_class(cache_size=10, torch_threads=0)
    reference = TextEncoder("tiny", max_length=16)
    settings = ("tiny", 16, "mean")
    calls: list[list[str]] = []
    encoder = enc._encoder(settings)
    original = encoder.encode
    encoder.encode = lambda texts: calls.append(list(texts)) or original(texts)
    a, b = enc._encode_many([(["a b", "c d"], settings), (["c d", "e f", "a b"], settings)])
    np.testing.assert_allclose(a, reference.encode(["a b", "c d"]), atol=1e-5)
    np.testing.assert_allclose(b, reference.encode(["c d", "e f", "a b"]), atol=1e-5)
    assert calls == [["a b", "c d", "e f"]]
    [again] = enc._encode_many([(["e f"], settings)])  # cached now: no BERT call
    assert calls == [["a b", "c d", "e f"]] and again.shape == (1, reference.dim)


def test_schemas_coerce_ids_and_name_bad_fields():
    req = RankRequest(history=[1, "b"], candidates=[2, {"item_id": 3, "text": "t"}], k=1)
    assert req.payload() == {
        "user_id": None,
        "history": ["1", "b"],
        "history_timestamps": None,
        "timestamp": None,
        "candidates": ["2", "3"],
        "texts": [None, "t"],
        "explain": False,
    }
    for body, loc in (
        ({"history": [True], "candidates": ["a"]}, ("history", 0)),
        ({"history": [], "candidates": [""]}, ("candidates", 0)),
        ({"history": [], "candidates": ["a"], "extra": 1}, ("extra",)),
        ({"history": [{"item_id": "a"}], "candidates": ["a"]}, ("history", 0)),
        ({"history": [{"item_id": "a", "timestamp": "1"}], "candidates": ["a"]}, ("history", 0)),
    ):
        with pytest.raises(ValidationError) as err:
            ScoreRequest.model_validate(body)
        assert any(e["loc"][: len(loc)] == loc for e in err.value.errors()), err.value.errors()
    assert candidates_error(3, 3) is None
    assert candidates_error(4, 3)["loc"] == ["body", "candidates"]


def test_client_retries_connection_errors_and_503():
    answers = iter(["refuse", 503, 200])
    ok = {
        "model": "m",
        "version": "v",
        "scores": [0.5],
        "items": [{"item_id": "a", "score": 0.5, "source": "known"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-API-Key"] == "k"
        answer = next(answers)
        if answer == "refuse":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(answer, json=ok if answer == 200 else {"detail": "busy"})

    with CTRClient("http://x", api_key="k", retries=2, backoff_s=0, transport=httpx.MockTransport(handler)) as c:
        assert c.score(["h"], ["a"]).scores == [0.5]

    def unprocessable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": [{"loc": ["body", "candidates"], "msg": "too many"}]})

    with CTRClient("http://x", retries=2, backoff_s=0, transport=httpx.MockTransport(unprocessable)) as c:
        with pytest.raises(CTRClientError) as err:
            c.rank(["h"], ["a"], k=1)
    assert err.value.status == 422 and err.value.detail[0]["loc"] == ["body", "candidates"]


def test_app_config_and_builder_inputs(monkeypatch):
    args, http, cfg = serve_args(CONFIGS_DIR / "serve.yaml", ["serve.max_batch_size=4"])
    assert http == {"host": "127.0.0.1", "port": 8000}
    assert args == {"experiment": cfg.to_dict()}  # the whole validated config, nothing left to read
    assert cfg.serve.max_batch_size == 4 and cfg.name == "seqctr"
    assert app_config(AppArgs.model_validate(args)) == cfg
    assert autoscaling_config(cfg.serve) == {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 30.0,
        "look_back_period_s": 30.0,
        "metrics_interval_s": 10.0,
    }
    with pytest.raises(ConfigError, match="serve.min_replicas=3 > serve.max_replicas=2"):
        app_config(AppArgs(overrides=["serve.min_replicas=3"]))
    with pytest.raises(ValidationError, match="not both"):
        AppArgs.model_validate({**args, "overrides": ["serve.max_batch_size=2"]})
    with pytest.raises(ValidationError, match="max_batch_size"):
        AppArgs.model_validate({"experiment": {"serve": {"max_batch_size": 0}}})
    with pytest.raises(ValidationError, match="modle"):
        build_app({"modle": "x"})
    monkeypatch.delenv("SEQCTR_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="SEQCTR_UNSET_KEY"):
        read_api_key("SEQCTR_UNSET_KEY")


def test_built_app_serves_the_int8_model_its_config_asks_for(checkpoints):
    """The builder's config (app_config, what build_app binds into the replica) asks for int8, and a
    scorer on it serves a quantised model whose scores differ slightly from fp32. Not through Serve's
    `_local_testing_mode`: it runs the ingress's FastAPI app in this process and leaves asyncio tasks in
    the app that @serve.ingress froze, so every later deploy of the class in the session would fail to
    pickle it ("cannot pickle '_asyncio.Task'")."""
    args = AppArgs.model_validate({"model": str(checkpoints["a"]), "overrides": ["serve.quantize=int8"]})
    build_app(args)  # the graph builds
    cfg = app_config(args)
    assert cfg.serve.quantize == "int8"
    scorer = Scorer(cfg, torch_threads=0)
    run(scorer.reconfigure({"model": str(checkpoints["a"])}))
    info = scorer.info()
    assert info["quantized"] == "int8" and info["checkpoint"] == str(checkpoints["a"])
    candidates = [f"i{k}" for k in range(40)]
    served = run(scorer.score({"history": HISTORY, "candidates": candidates}))["scores"]
    fp32 = offline_scores(checkpoints["a"], HISTORY, candidates)
    np.testing.assert_allclose(served, fp32, atol=0.02)
    assert np.abs(np.asarray(served) - fp32).max() > 1e-6  # int8 weights, not the fp32 model


def test_serve_joins_only_a_named_or_recorded_cluster(monkeypatch):
    import ray

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert running_cluster() == "10.0.0.5:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert running_cluster() is None  # never Ray's "auto" search of every local Ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ConfigError, match="--detach needs a running Ray cluster"):
        connect_ray(detach=True)


def test_serving_pins_the_latest_run_to_its_checkpoint(tmp_path):
    from seqctr.platform.runs import write_latest
    from seqctr.serving.deployments import pin_model

    root = tmp_path / "runs" / "seqctr"
    write_latest(root, {"run_id": "20260101-000000-aaaa", "best_checkpoint": str(tmp_path / "ck" / "epoch_001")})
    # what the endpoint reports and hot-reloads from is the run's checkpoint, not the moving pointer
    assert pin_model(str(root / "latest"), ExperimentConfig()) == str(tmp_path / "ck" / "epoch_001")
