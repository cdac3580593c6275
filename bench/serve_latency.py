"""Serve endpoint latency and throughput against a bare FastAPI/uvicorn app running the same model.

    .venv/bin/python bench/serve_latency.py                          # train a default-size model, then measure
    .venv/bin/python bench/serve_latency.py --epochs 0 --duration 5  # untrained model, shorter runs
    .venv/bin/python bench/serve_latency.py --checkpoint DIR --samples work/samples   # + int8 AUC cost

Requests carry 100 candidates and a 50-item timed history over 2,000 items, on loopback. Load comes
from `wrk` (closed loop, c = 1, 8, 32 connections, a Lua script cycling prepared POST bodies; pinned to
its own core when the machine has 4+) when it is installed (`apt-get install wrk`), else from an
asyncio + httpx client; open-loop runs (fixed arrival rates, latency from the scheduled send) use the
Python client. Each row reports p50, p99, requests/s and the CPU split (server / client / rest of the
machine / idle) over the run. Setups, the same load generator for all:
  - bare:          one uvicorn process: FastAPI + the same scoring code in-process, no Ray;
  - serve:         the Ray Serve app (proxy -> CTRScorer with its FastAPI routes), one replica of the
                   default size (serve.replica_cpus), batching on;
  - serve-nobatch: serve.max_batch_size=1 (c=32);  serve-int8: serve.quantize=int8 (c=8, 32).
Also: the in-process cost of one request (JSON -> pydantic -> encode -> model -> JSON bytes), the
bars' ratios, Serve's per-stage breakdown read back from the replica's own metrics on the node's
Prometheus endpoint (seqctr/serving/telemetry.py), and fp32 vs int8 latency (+ test AUC with samples).

(No `from __future__ import annotations`: FastAPI must see the bare app's request class, imported
inside `bare_server`, as a class rather than a string.)
"""

import argparse
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
from loadgen import closed_loop, find_pids, open_loop, wrk_available, wrk_script  # noqa: E402

LEVELS = (1, 8, 32)


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
    return save_checkpoint(path, model=model, config=cfg, item_index=index.to_json(), metrics={})


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
    path = save_checkpoint(root / "checkpoint", model=model, config=cfg, item_index=index.to_json(), metrics={})
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
    """FastAPI + uvicorn, model in-process: the same request schema, scoring code and one-pass JSON
    response as the Serve route, no Ray (async route, scored inline: the cheapest FastAPI path)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from seqctr.platform.model.predictor import load_model
    from seqctr.serving.deployments import ServingModel, build_response, prepare_job, response_bytes, score_jobs
    from seqctr.serving.schemas import ScoreRequest, ScoreResponse

    torch.set_num_threads(1)
    model = ServingModel(load_model(checkpoint), checkpoint, checkpoint, checkpoint, "bare", "bare")
    app = FastAPI()

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(request: ScoreRequest) -> Response:
        job = prepare_job(model, request.payload())
        [(probs, attention)] = score_jobs(model.model, [job])
        return Response(response_bytes(build_response(model, job, probs, attention)), media_type="application/json")

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


def in_process_cost(checkpoint: Path, bodies: list[dict]) -> dict[str, float]:
    """Milliseconds of one request in-process, by step, on one torch thread: JSON decode + pydantic,
    encoding, model, response dict + JSON bytes (what a server cannot do faster than)."""
    import torch

    from seqctr.platform.model.predictor import load_model
    from seqctr.serving.deployments import ServingModel, build_response, prepare_job, response_bytes, score_jobs
    from seqctr.serving.schemas import ScoreRequest

    torch.set_num_threads(1)
    model = ServingModel(load_model(checkpoint), "", "", "", "bench", "bench")
    raw = [json.dumps(b).encode() for b in bodies[:200]]
    steps = dict.fromkeys(("parse", "encode", "model", "response"), 0.0)
    for i, data in enumerate(raw * 2):
        t0 = time.perf_counter()
        payload = ScoreRequest.model_validate(json.loads(data)).payload()
        t1 = time.perf_counter()
        job = prepare_job(model, payload)
        t2 = time.perf_counter()
        [(probs, attention)] = score_jobs(model.model, [job])
        t3 = time.perf_counter()
        response_bytes(build_response(model, job, probs, attention))
        t4 = time.perf_counter()
        if i >= len(raw):  # the first pass warms up
            for step, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                steps[step] += dt * 1000 / len(raw)
    out = {k: round(v, 3) for k, v in steps.items()}
    return out | {"total": round(sum(steps.values()), 3)}


# ----------------------------------------------------------------------------- Serve variants


def deploy_variant(config: Path, checkpoint: Path, overrides: list[str], port: int) -> list[int]:
    """Deploy the app with `overrides`; returns the pids of its scorer replica(s) and the proxy."""
    from ray import serve

    from seqctr.cli.serve import deploy

    args = {"config": str(config), "overrides": overrides, "encoder_cpus": 0.1}
    info = deploy(args, {"model": str(checkpoint)}, name="bench", port=port, timeout_s=300)["model"]
    wanted = dict(o.split("=", 1) for o in overrides)
    served = {k: str(info["config"]["serve"][k.split(".")[1]]) for k in wanted}
    if served != wanted:
        raise RuntimeError(f"the scorer serves {served}, expected {wanted}")
    # The cold-start encoder loads in the background; let it finish before measuring.
    encoder = serve.get_deployment_handle("ItemEncoder", app_name="bench")
    encoder.warm.remote(**info["config"]["encoder"]).result(timeout_s=300)
    return find_pids("ServeReplica:bench:CTRScorer", "ProxyActor")


def stage_snapshot() -> dict[str, tuple[float, float]]:
    """stage -> (sum ms, count) of the bench app's seqctr_stage_ms on the local node's Prometheus endpoint."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    node = next(n for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "ray_seqctr_stage_ms":
            for sample in family.samples:
                if sample.labels.get("application") == "bench" and sample.name.endswith(("_sum", "_count")):
                    row = out.setdefault(sample.labels["stage"], [0.0, 0.0])
                    row[sample.name.endswith("_count")] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_breakdown(before: dict[str, tuple[float, float]], requests: int, timeout_s: float = 60) -> dict[str, Any]:
    """Mean ms per stage over the requests since `before`, once Ray has exported them (every few s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = stage_snapshot()
        done = after.get("response", (0, 0))[1] - before.get("response", (0, 0))[1]
        if done >= requests or time.monotonic() > deadline:
            break
        time.sleep(2)
    means = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            means[stage] = round((total - t0) / (count - c0), 3)
    return {"mean_ms": means, "requests": int(done)}


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


def print_table(results: dict[str, Any]) -> None:
    print(f"{'setup':<22}{'load':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'err':>5}  cpu srv/cli/other/idle %  client")
    for setup, rows in results["runs"].items():
        for load, row in rows.items():
            cpu = row["cpu"]
            split = f"{cpu['server_pct']:>5}/{cpu['client_pct']:>5}/{cpu['other_pct']:>5}/{cpu['idle_pct']:>5}"
            print(
                f"{setup:<22}{load:>9}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['req_per_s']:>8}{row['errors']:>5}"
                f"  {split:<30}  {row['client']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="Checkpoint folder (default: train one, see --epochs).")
    parser.add_argument("--epochs", type=int, default=1, help="In-process training epochs (0: untrained).")
    parser.add_argument("--samples", help="`seqctr data build` folder: int8 vs fp32 AUC on its test split.")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per load run.")
    parser.add_argument("--python-client", action="store_true", help="Closed loop from Python even with wrk.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Serve config override.")
    parser.add_argument("--only-serve", action="store_true", help="Serve closed loop and stages only (quick A/B).")
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
    bodies = request_bodies(loaded.index.ids, 256, opts.history, opts.candidates)
    script = wrk_script(bodies[:64]) if wrk_available() and not opts.python_client else None
    config = tmp / "experiment.yaml"
    base = ["serve.min_replicas=1", "serve.max_replicas=1", "serve.max_candidates=1000", *opts.overrides]
    config.write_text(load_config(None, base).to_yaml())
    duration = opts.duration
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "history": opts.history,
        "candidates": opts.candidates,
        "cores": os.cpu_count(),
        "load_generator": "wrk" if script else "python",
        "in_process_ms": in_process_cost(checkpoint, bodies),
        "runs": {},
        "stages": {},
    }
    runs = results["runs"]
    print("[bench] in-process ms per request:", results["in_process_ms"], flush=True)

    bare_port, serve_port = opts.port + 1, opts.port
    bare_url, serve_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{serve_port}"
    bare = start_bare(checkpoint, bare_port)
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)  # the dashboard hosts Serve's REST API
    try:
        serve_pids = deploy_variant(config, checkpoint, [], serve_port)
        if opts.only_serve:
            for c in LEVELS:
                before = stage_snapshot()
                row = closed_loop(serve_url, bodies, c, duration, serve_pids, script)
                print(f"[bench] serve c={c}: {row}\n  stages {stage_breakdown(before, row['requests'])}", flush=True)
            return
        for c in LEVELS:  # interleaved, so load from other processes hits both alike
            runs.setdefault("bare", {})[f"c={c}"] = closed_loop(bare_url, bodies, c, duration, [bare.pid], script)
            before = stage_snapshot()
            runs.setdefault("serve", {})[f"c={c}"] = row = closed_loop(
                serve_url, bodies, c, duration, serve_pids, script
            )
            results["stages"][f"c={c}"] = stage_breakdown(before, row["requests"])
            print(f"[bench] c={c}: bare {runs['bare'][f'c={c}']}\n  serve {row}", flush=True)
        if script is not None:  # the same c=8 load from the Python client: what the generator costs
            runs["bare (python client)"] = {"c=8": closed_loop(bare_url, bodies, 8, duration, [bare.pid], None)}
            runs["serve (python client)"] = {"c=8": closed_loop(serve_url, bodies, 8, duration, serve_pids, None)}
        capacity = runs["bare"]["c=8"]["req_per_s"]
        for fraction in (0.5, 0.9):
            rate = fraction * capacity
            for setup, url, pids in (("bare", bare_url, [bare.pid]), ("serve", serve_url, serve_pids)):
                key = f"{setup} (open loop)"
                runs.setdefault(key, {})[f"{rate:.0f}/s"] = open_loop(url, bodies, rate, duration, pids)
        bare.terminate()
        pids = deploy_variant(config, checkpoint, ["serve.max_batch_size=1"], serve_port)
        runs["serve-nobatch"] = {"c=32": closed_loop(serve_url, bodies, 32, duration, pids, script)}
        pids = deploy_variant(config, checkpoint, ["serve.quantize=int8"], serve_port)
        runs["serve-int8"] = {f"c={c}": closed_loop(serve_url, bodies, c, duration, pids, script) for c in (8, 32)}
    finally:
        bare.terminate()
        bare.wait()
        serve.shutdown()
        ray.shutdown()
    if samples is None and (Path(loaded.config.data.samples) / "test").is_dir():
        samples = loaded.config.data.samples
    results["int8_vs_fp32"] = int8_cost(checkpoint, samples, bodies)

    print_table(results)
    serve_rps, bare_rps = runs["serve"], runs["bare"]
    results["bars"] = {
        "in_process_ms": results["in_process_ms"]["total"],
        "bare_p50_c1_over_in_process": round(bare_rps["c=1"]["p50_ms"] / results["in_process_ms"]["total"], 2),
        "serve_p50_c1_over_in_process": round(serve_rps["c=1"]["p50_ms"] / results["in_process_ms"]["total"], 2),
        "serve_over_bare_c8": round(serve_rps["c=8"]["req_per_s"] / bare_rps["c=8"]["req_per_s"], 3),
        "serve_over_bare_c32": round(serve_rps["c=32"]["req_per_s"] / bare_rps["c=32"]["req_per_s"], 3),
        "batching_on_over_off_c32": round(
            serve_rps["c=32"]["req_per_s"] / runs["serve-nobatch"]["c=32"]["req_per_s"], 3
        ),
    }
    print("stage breakdown (Serve, mean ms per request, from the replica's metrics):")
    for level, stages in results["stages"].items():
        print(f"  {level}: {stages['mean_ms']} over {stages['requests']} requests")
    print("bars (p50 c=1 within 2x in-process; serve/bare >= 0.8 at c=8, 32):", json.dumps(results["bars"]))
    print("int8 vs fp32:", json.dumps(results["int8_vs_fp32"]))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
