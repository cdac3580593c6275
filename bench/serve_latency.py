"""Serve endpoint latency and throughput against a bare FastAPI/uvicorn app running the same model.

    .venv/bin/python bench/serve_latency.py                          # default-sized untrained model
    .venv/bin/python bench/serve_latency.py --checkpoint DIR --samples work/samples   # + int8 AUC cost

Requests carry 100 candidates and a 50-item history, sent over loopback at fixed concurrency (1, 8,
32) for a bounded number of requests each. In the same run, for each level: p50, p99 and requests/s of
  - serve:        the Ray Serve app (proxy -> CTRScorer with its FastAPI routes), one replica, batching on;
  - bare:         one uvicorn process running FastAPI + the same scoring code in-process, no Ray;
  - serve-nobatch (at 32): serve.max_batch_size=1;  serve-int8: serve.quantize=int8.
Both servers score with 1 torch thread (a 1-CPU replica). With --samples (a `seqctr data build`
folder) it also reports the test-split AUC of fp32 vs int8 and their in-process latency.

(No `from __future__ import annotations`: FastAPI must see the bare app's request class, imported
inside `bare_server`, as a class rather than a string.)
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

LEVELS = (1, 8, 32)
REQUESTS = {1: 100, 8: 400, 32: 600}


# ----------------------------------------------------------------------------- the model under test


def synthetic_checkpoint(path: Path, items: int, max_seq_len: int) -> Path:
    """An untrained default-config model (embed 32, LSTM 64, MLP 128-64, 384-d MiniLM-sized text table)."""
    import torch

    from seqctr.platform.config import load_config
    from seqctr.platform.model.checkpoint import save_checkpoint
    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex

    cfg = load_config(None, [f"data.max_seq_len={max_seq_len}"])
    index = ItemIndex([f"item{k}" for k in range(items)])
    table = np.random.default_rng(0).normal(size=(len(index), 384)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(index), table).eval()
    return save_checkpoint(path, model=model, config=cfg, item_index_json=index.to_json(), metrics={})


def trained_checkpoint(root: Path, epochs: int, max_seq_len: int) -> tuple[Path, Path]:
    """A default-size model trained in-process on a small synthetic log (plain torch loop, MiniLM item
    texts), so int8's AUC cost is measured on a model that learned something. Returns (checkpoint,
    samples folder with a time-split test/ Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from seqctr.platform.config import SyntheticConfig, load_config
    from seqctr.platform.data.embeddings import TextEncoder
    from seqctr.platform.data.samples import samples_from_events
    from seqctr.platform.model.checkpoint import save_checkpoint
    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex, encode_samples
    from seqctr.platform.model.metrics import auc

    cfg = load_config(None, [f"data.max_seq_len={max_seq_len}"])
    report = generate_synthetic_log(root / "data", SyntheticConfig(users=500, items=600, events=20_000, seed=3))
    events = pq.read_table(report["events_path"], columns=["user_id", "item_id", "timestamp", "label"])
    samples = samples_from_events(events, max_seq_len).sort_by("timestamp")
    n = samples.num_rows
    train, val, test = (
        samples.slice(0, int(0.8 * n)),
        samples.slice(int(0.8 * n), int(0.1 * n)),
        samples.slice(int(0.9 * n)),
    )
    (root / "samples" / "test").mkdir(parents=True)
    pq.write_table(test, root / "samples" / "test" / "part-0.parquet")
    items = pq.read_table(report["items_path"])
    index = ItemIndex(items.column("item_id").to_pylist())
    vectors = TextEncoder("packaged", max_length=cfg.embed.max_length).encode(items.column("text").to_pylist())
    table = np.zeros((len(index), vectors.shape[1]), np.float32)
    table[index.lookup(items.column("item_id"))] = vectors
    torch.manual_seed(0)
    model = build_model(cfg.model, len(index), table)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    keys = ("hist_idx", "hist_bucket", "hist_age", "hist_len", "target_idx", "target_bucket")

    def encoded(part: pa.Table) -> dict[str, np.ndarray]:
        return encode_samples(part, index, cfg.model.id_buckets, max_seq_len)

    arrays, val_arrays = encoded(train), encoded(val)
    for epoch in range(epochs):
        model.train()
        order = np.random.default_rng(epoch).permutation(len(arrays["label"]))
        for start in range(0, len(order), 512):
            rows = order[start : start + 512]
            batch = {k: torch.as_tensor(arrays[k][rows]) for k in keys}
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(batch), torch.as_tensor(arrays["label"][rows])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            logits = model({k: torch.as_tensor(val_arrays[k]) for k in keys})
        print(
            f"[bench] trained epoch {epoch}: val AUC {auc(val_arrays['label'], logits.numpy()):.4f}",
            flush=True,
        )
    path = save_checkpoint(root / "checkpoint", model=model, config=cfg, item_index_json=index.to_json(), metrics={})
    return path, root / "samples"


def generate_synthetic_log(out: Path, syn: Any) -> dict[str, Any]:
    from seqctr.platform.data.synthetic import generate_synthetic

    return generate_synthetic(syn, out)


def request_bodies(item_ids: list[str], n: int, history: int, candidates: int, seed: int = 0) -> list[dict]:
    """Random requests whose clicks carry timestamps (a click every 1-600 s before the request)."""
    rng = np.random.default_rng(seed)
    now = 1_717_000_000

    def clicks() -> list[dict[str, Any]]:
        stamps = now - np.cumsum(rng.integers(1, 600, history))[::-1]
        return [{"item_id": i, "timestamp": int(t)} for i, t in zip(rng.choice(item_ids, history), stamps, strict=True)]

    return [
        {
            "history": clicks(),
            "timestamp": now,
            "candidates": rng.choice(item_ids, candidates, replace=False).tolist(),
        }
        for _ in range(n)
    ]


# ----------------------------------------------------------------------------- the bare baseline


def bare_server(checkpoint: str, port: int) -> None:
    """FastAPI + uvicorn, model in-process: the same request schema and scoring code, no Ray."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from seqctr.platform.model.predictor import load_model
    from seqctr.serving.deployments import ServingModel, build_response, prepare_job, score_jobs
    from seqctr.serving.schemas import ScoreRequest, ScoreResponse

    torch.set_num_threads(1)
    model = ServingModel(load_model(checkpoint), checkpoint, checkpoint, checkpoint, "bare", "bare")
    app = FastAPI()

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(request: ScoreRequest) -> dict[str, Any]:
        job = prepare_job(model, request.payload())
        [(probs, attention)] = score_jobs(model.model, [job])
        return build_response(model, job, probs, attention)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_bare(checkpoint: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(checkpoint), "--port", str(port)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("bare server did not start")


# ----------------------------------------------------------------------------- load generation


async def _load(url: str, bodies: list[dict], concurrency: int, headers: dict) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:

        async def worker() -> None:
            nonlocal errors
            for body in queue:
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/score", json=body)
                    errors += response.status_code != 200
                except httpx.TransportError:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        for body in bodies[:concurrency]:  # warm-up: connections and first batches
            await client.post("/v1/score", json=body)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    if errors == len(latencies):
        raise RuntimeError(f"{url}: {errors} of {len(latencies)} requests failed at concurrency {concurrency}")
    ms = np.array(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "req_per_s": round(len(latencies) / wall, 1),
        "requests": len(latencies),
        "errors": errors,
    }


def measure(url: str, bodies: list[dict], concurrency: int) -> dict[str, float]:
    return asyncio.run(_load(url, bodies[: REQUESTS[concurrency]], concurrency, {}))


# ----------------------------------------------------------------------------- Serve variants


def deploy_variant(config: Path, checkpoint: Path, overrides: list[str], port: int) -> None:
    from ray import serve

    from seqctr.cli.serve import deploy

    args = {"config": str(config), "overrides": overrides, "scorer_cpus": 1.0, "encoder_cpus": 0.1}
    info = deploy(args, {"model": str(checkpoint)}, name="bench", port=port, timeout_s=300)["model"]
    wanted = dict(o.split("=", 1) for o in overrides)
    served = {k: str(info["config"]["serve"][k.split(".")[1]]) for k in wanted}
    if served != wanted:
        raise RuntimeError(f"the scorer serves {served}, expected {wanted}")
    # The cold-start encoder loads in the background; let it finish before measuring.
    encoder = serve.get_deployment_handle("ItemEncoder", app_name="bench")
    encoder.warm.remote(**info["config"]["encoder"]).result(timeout_s=300)


# ----------------------------------------------------------------------------- int8 vs fp32 offline


def int8_cost(checkpoint: Path, samples: str | None, bodies: list[dict]) -> dict[str, Any]:
    """In-process latency of one request (fp32 vs int8) and, with a test split, the AUC of each."""
    import torch

    from seqctr.platform.model.features import encode_samples
    from seqctr.platform.model.metrics import auc
    from seqctr.platform.model.predictor import load_model
    from seqctr.serving.deployments import ServingModel, prepare_job, quantize_int8, score_jobs
    from seqctr.serving.schemas import ScoreRequest

    torch.set_num_threads(1)
    fp32 = load_model(checkpoint)
    int8 = load_model(checkpoint)
    int8.model = quantize_int8(int8.model)
    out: dict[str, Any] = {}
    for name, loaded in (("fp32", fp32), ("int8", int8)):
        model = ServingModel(loaded, "", "", "", name, name)
        jobs = [prepare_job(model, ScoreRequest.model_validate(b).payload()) for b in bodies[:200]]
        score_jobs(loaded.model, jobs[:5])
        start = time.perf_counter()
        for job in jobs:
            score_jobs(loaded.model, [job])
        out[f"{name}_ms_per_request"] = round((time.perf_counter() - start) / len(jobs) * 1000, 3)
    if samples:
        import pyarrow.parquet as pq

        from seqctr.platform.data.contract import list_parquet_files

        table = pq.ParquetFile(list_parquet_files(f"{samples.rstrip('/')}/test")[0]).read()
        table = table.slice(0, 50_000)
        cfg = fp32.config
        arrays = encode_samples(table, fp32.index, cfg.model.id_buckets, cfg.data.max_seq_len)
        for name, loaded in (("fp32", fp32), ("int8", int8)):
            out[f"{name}_test_auc"] = round(auc(arrays["label"], loaded.predict(arrays)), 5)
        out["auc_cost"] = round(out["fp32_test_auc"] - out["int8_test_auc"], 5)
        out["test_rows"] = table.num_rows
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="Checkpoint folder (default: train one, see --epochs).")
    parser.add_argument("--epochs", type=int, default=1, help="In-process training epochs (0: untrained).")
    parser.add_argument("--samples", help="`seqctr data build` folder: int8 vs fp32 AUC on its test split.")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", default="work/bench/serve_latency.json")
    parser.add_argument("--bare-server", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.bare_server:
        return bare_server(opts.bare_server, opts.port)

    import ray
    from ray import serve

    from seqctr.platform.config import load_config
    from seqctr.platform.model.predictor import load_model

    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    samples = opts.samples
    if opts.checkpoint:
        checkpoint = Path(opts.checkpoint)
    elif opts.epochs > 0:
        checkpoint, trained_samples = trained_checkpoint(tmp, opts.epochs, opts.history)
        samples = samples or str(trained_samples)
    else:
        checkpoint = synthetic_checkpoint(tmp / "checkpoint", opts.items, opts.history)
    loaded = load_model(checkpoint)
    bodies = request_bodies(loaded.index.ids, max(REQUESTS.values()) + 32, opts.history, opts.candidates)
    config = tmp / "experiment.yaml"
    base = ["serve.min_replicas=1", "serve.max_replicas=1", "serve.max_candidates=1000"]
    config.write_text(load_config(None, base).to_yaml())
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "history": opts.history,
        "candidates": opts.candidates,
    }

    bare_port, serve_port = opts.port + 1, opts.port
    bare_url, serve_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{serve_port}"
    bare = start_bare(checkpoint, bare_port)
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)  # the dashboard hosts Serve's REST API
    results.update({"bare": {}, "serve": {}, "serve-nobatch": {}, "serve-int8": {}})
    try:
        deploy_variant(config, checkpoint, [], serve_port)
        for c in LEVELS:  # interleaved, so load from other processes hits both alike
            results["bare"][c] = measure(bare_url, bodies, c)
            results["serve"][c] = measure(serve_url, bodies, c)
        bare.terminate()
        deploy_variant(config, checkpoint, ["serve.max_batch_size=1"], serve_port)
        results["serve-nobatch"][32] = measure(serve_url, bodies, 32)
        deploy_variant(config, checkpoint, ["serve.quantize=int8"], serve_port)
        for c in (8, 32):
            results["serve-int8"][c] = measure(serve_url, bodies, c)
    finally:
        bare.terminate()
        bare.wait()
        serve.shutdown()
        ray.shutdown()
    if samples is None and (Path(loaded.config.data.samples) / "test").is_dir():
        samples = loaded.config.data.samples
    results["int8_vs_fp32"] = int8_cost(checkpoint, samples, bodies)

    print(f"{'setup':<15}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    for setup in ("bare", "serve", "serve-nobatch", "serve-int8"):
        for c, row in results[setup].items():
            print(f"{setup:<15}{c:>5}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['req_per_s']:>8}{row['errors']:>8}")
    ratio = results["serve"][8]["req_per_s"] / results["bare"][8]["req_per_s"]
    batching = results["serve"][32]["req_per_s"] / results["serve-nobatch"][32]["req_per_s"]
    results["ratios"] = {
        "serve_over_bare_c8": round(ratio, 3),
        "batching_on_over_off_c32": round(batching, 3),
    }
    print(f"serve/bare throughput at c=8: {ratio:.2f}x (bar >= 0.6); p99 at c=8: {results['serve'][8]['p99_ms']} ms")
    print(f"batching on/off throughput at c=32: {batching:.2f}x")
    print("int8 vs fp32:", json.dumps(results["int8_vs_fp32"]))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
