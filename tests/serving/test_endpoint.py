"""The endpoint on Ray Serve, end to end over HTTP: one app deployed for the module (the way
`seqctr serve` deploys it), checked against the offline predictor, then hot-reloaded."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import typer
from serving_helpers import free_port, offline_scores, tiny_serving_config
from typer.testing import CliRunner

from seqctr.cli.serve import api_key_env_vars, deploy, live_applications, score_command, serve_args, serve_command
from seqctr.platform.data.embeddings import TextEncoder
from seqctr.platform.model.predictor import load_model
from seqctr.serving.client import AsyncCTRClient, CTRClient
from seqctr.serving.telemetry import STAGES

APP = "seqctr_test"
KEY_ENV = "SEQCTR_TEST_API_KEY"
KEY = "test-key-123"
SERVE_SETTINGS = [
    "serve.min_replicas=1",
    "serve.max_replicas=2",
    "serve.target_ongoing_requests=3",
    "serve.upscale_delay_s=2",
    "serve.downscale_delay_s=20",
    "serve.max_batch_size=8",
    "serve.batch_wait_timeout_s=0.002",
    "serve.max_candidates=50",
    "serve.max_body_bytes=4096",
    f"serve.api_key_env={KEY_ENV}",
]
HISTORY = [f"i{k}" for k in range(14)]  # longer than the tiny max_seq_len (10)
CANDIDATES = ["i1", "i20", "i33", "never-seen", "i7"]


@pytest.fixture(scope="module")
def endpoint(ray_session, checkpoints, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    config = root / "experiment.yaml"
    config.write_text(tiny_serving_config(*SERVE_SETTINGS).to_yaml())
    os.environ[KEY_ENV] = KEY
    port = free_port()
    args, _, _ = serve_args(config, [])  # what `seqctr serve --config FILE` deploys: the whole config
    result = deploy(
        args,
        {"model": str(checkpoints["a"])},
        name=APP,
        port=port,
        env_vars=api_key_env_vars(KEY_ENV),
        timeout_s=120,
    )
    assert result["action"] == "started"
    url = f"http://127.0.0.1:{port}"
    yield {
        "url": url,
        "args": args,
        "config": str(config),
        "port": port,
        "root": root,
        "version_a": result["model"]["version"],
    }
    serve.shutdown()


@pytest.fixture
def client(endpoint):
    with CTRClient(endpoint["url"], api_key=KEY, retries=0) as c:
        yield c


def post(endpoint, path: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(endpoint["url"] + path, json=body, headers=headers, timeout=30, **kwargs)


def test_score_equals_offline_model(client, checkpoints):
    out = client.score(HISTORY, CANDIDATES)
    expected = offline_scores(checkpoints["a"], HISTORY, CANDIDATES)
    np.testing.assert_allclose(out.scores, expected, atol=1e-5)
    assert [i.item_id for i in out.items] == CANDIDATES
    assert [i.source for i in out.items] == ["known", "known", "known", "hashed", "known"]
    assert out.model == "tiny" and out.version.startswith("sha256:")


def test_click_timestamps_reach_the_model(client, checkpoints):
    now = 1_717_000_000
    stamps = [now - 600 * (len(HISTORY) - k) for k in range(len(HISTORY))]
    out = client.score(HISTORY, CANDIDATES, history_timestamps=stamps, timestamp=now)
    expected = offline_scores(checkpoints["a"], HISTORY, CANDIDATES, stamps, now)
    np.testing.assert_allclose(out.scores, expected, atol=1e-5)


def test_integer_ids_are_the_same_items_as_strings(client, checkpoints):
    as_ints = client.score([3, 4], [5, 6])
    as_strs = client.score(["3", "4"], ["5", "6"])
    assert as_ints.scores == as_strs.scores
    np.testing.assert_allclose(as_ints.scores, offline_scores(checkpoints["a"], ["3", "4"], ["5", "6"]), atol=1e-5)


def test_rank_is_the_sorted_order(client):
    scores = client.score(HISTORY, CANDIDATES).scores
    ranked = client.rank(HISTORY, CANDIDATES, k=3)
    best = sorted(range(len(CANDIDATES)), key=lambda i: -scores[i])[:3]
    assert [i.item_id for i in ranked.items] == [CANDIDATES[i] for i in best]
    assert [i.score for i in ranked.items] == [scores[i] for i in best]
    assert len(client.rank(HISTORY, CANDIDATES, k=99).items) == len(CANDIDATES)


def test_cold_start_item_scores_by_its_text_embedding(client, checkpoints):
    text = "red trail running shoes"
    out = client.score(HISTORY, ["i1", {"item_id": "brand-new", "text": text}])
    assert [i.source for i in out.items] == ["known", "text"]

    loaded = load_model(checkpoints["a"])
    cfg = loaded.config
    vector = TextEncoder(cfg.embed.model, max_length=cfg.embed.max_length, pooling=cfg.embed.pooling).encode([text])
    hist = HISTORY[-cfg.data.max_seq_len :]
    hist_idx = torch.tensor(loaded.index.lookup(hist))[None]
    hist_bucket = torch.as_tensor(loaded.index.buckets(cfg.model.id_buckets))[hist_idx]
    with torch.inference_mode():
        logit = loaded.model.score_candidates(
            hist_idx,
            hist_bucket,
            torch.tensor([len(hist)]),
            torch.tensor([1]),
            torch.as_tensor(loaded.index.hash_buckets(["brand-new"], cfg.model.id_buckets)),
            torch.as_tensor(vector),
            torch.tensor([True]),
        )
    assert out.scores[1] == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    hashed = client.score(HISTORY, ["brand-new"]).scores[0]
    assert hashed != pytest.approx(out.scores[1], abs=1e-6)  # the text changed the score


def test_explain_returns_attention_per_history_item(client):
    out = client.score(HISTORY, CANDIDATES, explain=True)
    assert out.history == HISTORY[-10:]  # cut to the most recent max_seq_len
    for item in out.items:
        assert len(item.attention) == 10
        assert sum(item.attention) == pytest.approx(1.0, abs=1e-5)
        assert min(item.attention) >= 0
    assert client.score(HISTORY, CANDIDATES).items[0].attention is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"history": ["i1"]}, ["body", "candidates"]),
        ({"candidates": ["i1"]}, ["body", "history"]),
        ({"history": ["i1"], "candidates": []}, ["body", "candidates"]),
        ({"history": "i1", "candidates": ["i1"]}, ["body", "history"]),
        ({"history": [1.5], "candidates": ["i1"]}, ["body", "history", 0]),
        ({"history": [], "candidates": [{"text": "no id"}]}, ["body", "candidates", 0]),
        ({"history": [], "candidates": ["i1"], "k": 0}, ["body", "k"]),
        ({"history": [], "candidates": ["i1"], "explain": "maybe"}, ["body", "explain"]),
        ({"history": [], "candidates": ["i1"] * 51}, ["body", "candidates"]),
        ({"history": [], "candidates": ["i1"], "candidate": ["i2"]}, ["body", "candidate"]),
        ({"history": [{"item_id": "i1"}], "candidates": ["i1"]}, ["body", "history", 0]),
        ({"history": [{"item_id": "i1", "timestamp": -1}], "candidates": ["i1"]}, ["body", "history", 0]),
        ({"history": [], "timestamp": 1_717_000_000_000, "candidates": ["i1"]}, ["body", "timestamp"]),
    ],
)
def test_bad_requests_are_422_naming_the_field(endpoint, body, field):
    response = post(endpoint, "/v1/rank", body)
    assert response.status_code == 422, response.text
    locs = [e["loc"][: len(field)] for e in response.json()["detail"]]
    assert field in locs, response.json()


def test_too_many_candidates_message_names_the_limit(endpoint):
    response = post(endpoint, "/v1/score", {"history": [], "candidates": [f"i{k}" for k in range(51)]})
    assert response.status_code == 422
    assert "serve.max_candidates" in response.json()["detail"][0]["msg"]


def test_body_over_the_limit_is_413(endpoint):
    big = {"history": ["x" * 100] * 50, "candidates": ["i1"]}
    response = post(endpoint, "/v1/score", big)
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body"]
    chunked = httpx.post(
        endpoint["url"] + "/v1/score",
        content=iter([b'{"history": [', b'"xxxxxxxxxx",' * 500, b'"x"], "candidates": ["i1"]}']),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413


def test_api_key_is_required(endpoint):
    for key in (None, "wrong"):
        response = post(endpoint, "/v1/score", {"history": [], "candidates": ["i1"]}, key=key)
        assert response.status_code == 401
        assert response.json()["detail"][0]["loc"] == ["header", "X-API-Key"]
    assert httpx.get(endpoint["url"] + "/v1/model").status_code == 401
    assert httpx.get(endpoint["url"] + "/openapi.json").json()["paths"].keys() >= {"/v1/score", "/v1/rank"}


def test_autoscaling_config_is_the_configured_one(endpoint):
    from ray.serve.context import _get_global_client

    details = live_applications(_get_global_client())[APP]["deployments"]["CTRScorer"]["deployment_config"]
    cfg = tiny_serving_config(*SERVE_SETTINGS).serve
    wanted = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
    }
    assert {k: details["autoscaling_config"][k] for k in wanted} == wanted
    assert details["max_ongoing_requests"] >= cfg.max_batch_size


def test_score_command_prints_the_ranking(endpoint, checkpoints, monkeypatch):
    monkeypatch.setenv("SEQCTR_API_KEY", KEY)
    cli = typer.Typer()
    cli.command()(score_command)
    history, candidates = ["i1", "i2", "i3"], ["i4", "i5", "i6", "i9"]
    flags = ["--url", endpoint["url"], "--history", ",".join(history), "--candidates", ",".join(candidates)]
    result = CliRunner().invoke(cli, [*flags, "--rank", "2"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]  # stderr may carry Ray log lines
    scores = offline_scores(checkpoints["a"], history, candidates)
    best = np.argsort(-scores)[:2]
    assert [i["item_id"] for i in items] == [candidates[i] for i in best]
    np.testing.assert_allclose([i["score"] for i in items], scores[best], atol=1e-5)


def test_concurrent_requests_are_scored_in_batches(endpoint, checkpoints, client):
    """Concurrent requests share a `@serve.batch` batch (the sizes /v1/model reports), never one larger
    than serve.max_batch_size (8 here, not Ray's default of 10), and each answer is still its own."""
    expected = offline_scores(checkpoints["a"], HISTORY, CANDIDATES)

    async def burst(n: int) -> list:
        async with AsyncCTRClient(endpoint["url"], api_key=KEY, retries=0, timeout=60) as c:
            return await asyncio.gather(*(c.score(HISTORY, CANDIDATES) for _ in range(n)))

    for _ in range(5):  # a replica that autoscaling just added may not have seen a burst yet
        for out in asyncio.run(burst(32)):
            np.testing.assert_allclose(out.scores, expected, atol=1e-5)
        sizes = client.model_info().batch_sizes
        if max(sizes, default=1) > 1:
            break
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8, sizes


def test_model_info(client, checkpoints):
    info = client.model_info()
    assert info.checkpoint == str(checkpoints["a"]) and info.uri == str(checkpoints["a"])
    assert info.metrics == {"val_auc": 0.5} and info.attention is True
    assert info.config["max_seq_len"] == 10 and info.config["serve"]["max_candidates"] == 50
    assert info.last_reload.ok is True
    assert sum(info.batch_sizes.values()) > 0


# -- hot reload (last: these change the served model)


def _stream(url: str, stop: threading.Event, results: list) -> None:
    with CTRClient(url, api_key=KEY, retries=0, timeout=60) as c:
        while not stop.is_set():
            try:
                results.append(c.score(HISTORY, CANDIDATES))
            except Exception as err:  # noqa: BLE001 - any failure is what the test counts
                results.append(err)


def scrape_node_metrics() -> dict[str, list]:
    """name -> samples of the local Ray node's Prometheus endpoint (where Serve's custom metrics go)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    node = next(n for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_request_path_metrics_reach_prometheus(endpoint, client):
    """Per-stage timers, batch sizes, candidates per request and by source, and the answering model's
    version, as Serve custom metrics on the node's Prometheus endpoint (exported every few seconds)."""
    candidates = ["i1", {"item_id": "metrics-new", "text": "blue rain jacket"}, "metrics-unseen"]
    for _ in range(3):
        assert [i.source for i in client.score(HISTORY, candidates).items] == ["known", "text", "hashed"]
    deadline = time.monotonic() + 90  # Ray's metrics export interval, not a latency bound
    while True:
        # Summed over replicas: the requests may land on a replica the autoscaler added, whose
        # metrics are exported a few seconds after the first one's.
        metrics = scrape_node_metrics()
        stages = {
            s.labels["stage"]
            for s in metrics.get("ray_seqctr_stage_ms", [])
            if s.name.endswith("_count") and s.labels.get("application") == APP and s.value > 0
        }
        sources: dict[str, float] = {}
        for sample in metrics.get("ray_seqctr_candidates", []):
            sources[sample.labels["source"]] = sources.get(sample.labels["source"], 0) + sample.value
        per_request = sum(
            s.value for s in metrics.get("ray_seqctr_candidates_per_request", []) if s.name.endswith("_sum")
        )
        if set(STAGES) <= stages and all(sources.get(k, 0) >= 3 for k in ("known", "text", "hashed")):
            if per_request >= 9:
                break
        assert time.monotonic() < deadline, f"stages {stages}, sources {sources}, candidates {per_request} after 90 s"
        time.sleep(2)
    versions = {s.labels["version"] for s in metrics["ray_seqctr_requests"] if s.labels.get("application") == APP}
    assert endpoint["version_a"] in versions
    assert any(s.name.endswith("_count") and s.value > 0 for s in metrics["ray_seqctr_batch_size"])


def test_hot_reload_under_load_loses_no_request(endpoint, checkpoints, client):
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_stream, args=(endpoint["url"], stop, results)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        while len(results) < 8:  # the stream is flowing before the reload starts
            threading.Event().wait(0.05)
        result = deploy(
            endpoint["args"],
            {"model": str(checkpoints["b"])},
            name=APP,
            port=endpoint["port"],
            env_vars=api_key_env_vars(KEY_ENV),
            timeout_s=120,
        )
        after = len(results)
        while len(results) < after + 8:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert result["action"] == "reloaded" and result["model"]["last_reload"]["ok"] is True
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    versions = [r.version for r in results]
    version_b = result["model"]["version"]
    assert version_b != endpoint["version_a"] and versions[-1] == version_b
    assert set(versions) == {endpoint["version_a"], version_b}  # requests on both sides of the swap
    expected = {
        endpoint["version_a"]: offline_scores(checkpoints["a"], HISTORY, CANDIDATES),
        version_b: offline_scores(checkpoints["b"], HISTORY, CANDIDATES),
    }
    for r in results:  # every answer is wholly one model's, never a mix
        np.testing.assert_allclose(r.scores, expected[r.version], atol=1e-5)
    assert client.model_info().uri == str(checkpoints["b"])


def test_failed_reload_keeps_the_old_model_and_reports_it(endpoint, checkpoints, client):
    broken = Path(endpoint["root"]) / "broken"
    shutil.copytree(checkpoints["a"], broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = client.model_info()

    cli = typer.Typer()
    cli.command()(serve_command)
    flags = ["--config", endpoint["config"], "--name", APP, "--port", str(endpoint["port"])]
    result = CliRunner().invoke(cli, ["--model", str(broken), *flags])  # `seqctr serve` on a running app
    assert result.exit_code == 2, result.output
    assert "reload failed, still serving tiny" in result.output and "sha256 mismatch" in result.output
    info = client.model_info()
    assert info.last_reload.ok is False and info.last_reload.uri == str(broken)
    assert "sha256 mismatch in model.safetensors" in info.last_reload.error
    assert (info.version, info.uri) == (before.version, before.uri)
    np.testing.assert_allclose(
        client.score(HISTORY, CANDIDATES).scores,
        offline_scores(checkpoints["b"], HISTORY, CANDIDATES),
        atol=1e-5,
    )
    missing = str(Path(endpoint["root"]) / "does-not-exist")
    deploy(
        endpoint["args"],
        {"model": missing},
        name=APP,
        port=endpoint["port"],
        env_vars=api_key_env_vars(KEY_ENV),
        timeout_s=120,
    )
    info = client.model_info()
    assert info.last_reload.ok is False and "does-not-exist" in info.last_reload.error
    assert info.version == before.version
