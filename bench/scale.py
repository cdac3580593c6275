"""How each stage grows with the log and the catalogue: one synthetic pipeline at three sizes.

    .venv/bin/python bench/scale.py                       # 300k / 1M / 3M events, 10k / 100k / 1M items
    .venv/bin/python bench/scale.py --sizes 100000:5000,300000:20000 --text off
    .venv/bin/python bench/scale.py --quick               # toy sizes, a minute (tests/bench runs it)

Per size (EVENTS:ITEMS): generate the synthetic log, build samples (Ray), embed the item texts (the
tiny random BERT unless --text off), train one epoch (Ray Train, 1 worker, then the test evaluation),
the best checkpoint's size and load time, register it, and serve one request in-process (load +
encode + score). Each stage reports its time, throughput, peak RSS (this process and all of its
descendants, i.e. the local Ray's workers, sampled every 0.25 s; shared pages count once per
process) and the bytes it wrote; `growth` is the exponent k of time ~ size^k between consecutive
sizes (1 = linear in events). Then the in-process time to encode and score one request (100
candidates, 50 history clicks) at 2k, 100k and 1M items (the bar: 1M within 1.5x of 2k).
Prints a table, then the JSON (also written to --out when given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FULL_SIZES = "300000:10000,1000000:100000,3000000:1000000"
QUICK_SIZES = "3000:150,6000:300"
REQUEST_ITEMS = "2000,100000,1000000"
QUICK_REQUEST_ITEMS = "2000,20000"
STAGES = ("generate", "build", "embed", "train", "checkpoint", "register", "serve")


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measuring


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc/*/stat (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class PeakRss:
    """Peak RSS of this process and of its whole process tree while the block runs (a sampler thread)."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.self_peak = self.tree_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        self.self_peak = max(self.self_peak, _rss_bytes(me))
        self.tree_peak = max(self.tree_peak, sum(_rss_bytes(p) for p in _tree(me)))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def folder_bytes(*paths: str | Path) -> int:
    total = 0
    for path in paths:
        p = Path(path)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def measure(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one stage: seconds, peak RSS (self, tree) and whatever the stage reports (rows, bytes)."""
    log(f"{name} ...")
    with PeakRss() as rss:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    row = {
        "stage": name,
        "seconds": round(seconds, 3),
        "rss_self_mb": rss.self_peak >> 20,
        "rss_tree_mb": rss.tree_peak >> 20,
    }
    row |= out
    if out.get("rows") is not None:
        row["rows_per_s"] = round(out["rows"] / max(out.get("timed_s", seconds), 1e-9))
    log(f"{name}: {seconds:.1f}s")
    return row


# ----------------------------------------------------------------------------- one pipeline


def make_config(work: Path, events: int, items: int, text: str, base: str | None) -> Any:
    from seqctr.platform.config import load_config

    users = max(20, events // 50)
    overrides = {
        "data.events": str(work / "data" / "events"),
        "data.items": str(work / "data" / "items"),
        "data.samples": str(work / "samples"),
        "data.synthetic.events": events,
        "data.synthetic.items": items,
        "data.synthetic.users": users,
        "data.synthetic.categories": min(20, items),
        "data.synthetic.chunk_events": min(250_000, max(1_000, events // 4)),
        "embed.out": str(work / "embeddings"),
        "embed.model": "tiny",
        "model.text": text != "off",
        "train.epochs": 1,
        "train.num_workers": 1,
        "train.storage_path": str(work / "runs"),
        "registry.root": str(work / "registry"),
    }
    return load_config(base, [f"{k}={v}" for k, v in overrides.items()])


def run_size(work: Path, events: int, items: int, text: str, base: str | None) -> list[dict[str, Any]]:
    """Every stage once at one size; returns one row per stage."""
    from seqctr.platform.data.synthetic import generate_synthetic
    from seqctr.platform.model.predictor import load_model
    from seqctr.platform.registry import Registry
    from seqctr.training.assets import prepare_assets
    from seqctr.training.trainer import ensure_samples, run_index, run_training

    cfg = make_config(work, events, items, text, base)
    rows: list[dict[str, Any]] = []
    data_dir = Path(cfg.data.events).parent

    def generate() -> dict[str, Any]:
        generate_synthetic(cfg.data.synthetic, data_dir)
        return {"rows": events, "bytes": folder_bytes(data_dir)}

    built: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        built.update(ensure_samples(cfg))
        return {"rows": sum(built["rows"].values()), "bytes": folder_bytes(cfg.data.samples)}

    def embed() -> dict[str, Any]:
        prepare_assets(cfg, run_index(cfg, None))  # embeds (cached afterwards) unless model.text is off
        return {"rows": items if cfg.model.text else None, "bytes": folder_bytes(cfg.embed.out)}

    trained: dict[str, Any] = {}

    def train() -> dict[str, Any]:
        trained.update(run_training(cfg))  # one epoch, then the test evaluation
        return {"rows": built["rows"]["train"], "bytes": folder_bytes(trained["run_dir"])}

    def checkpoint() -> dict[str, Any]:
        loaded = load_model(trained["best_checkpoint"])  # verifies every sha256, rebuilds the model
        ckpt = Path(trained["best_checkpoint"])
        tables = ckpt.parent / "tables"  # a shared text table, when the checkpoint references one
        return {
            "index_rows": len(loaded.index),
            "bytes": folder_bytes(ckpt),
            "shared_table_bytes": folder_bytes(tables),
        }

    def register() -> dict[str, Any]:
        registry = Registry(cfg.registry.root)
        registry.register(cfg.registry.name, trained["best_checkpoint"], run_id="scale")
        return {"bytes": folder_bytes(cfg.registry.root)}

    def serve() -> dict[str, Any]:
        start = time.perf_counter()
        model = serving_model(load_model(trained["best_checkpoint"]))
        loaded_s = time.perf_counter() - start
        body = request_body(list(model.index.ids[2:]), 50, 100)
        cost = request_cost(model, body)
        return {"load_s": round(loaded_s, 3), "text_dim": int(model.model.text_dim), **cost}

    rows.append(measure("generate", generate))
    rows.append(measure("build", build))
    rows.append(measure("embed", embed))
    rows.append(measure("train", train))
    rows.append(measure("checkpoint", checkpoint))
    rows.append(measure("register", register))
    rows.append(measure("serve", serve))
    for row in rows:
        row |= {"events": events, "items": items}
    return rows


# ----------------------------------------------------------------------------- one request


def serving_model(loaded: Any) -> Any:
    from seqctr.serving.deployments import ServingModel

    return ServingModel(loaded, "", "", "", "scale", "scale")


def request_body(item_ids: list[str], history: int, candidates: int, seed: int = 0) -> dict[str, Any]:
    """A request whose clicks carry timestamps (a click every 1-600 s before the request)."""
    rng = np.random.default_rng(seed)
    now = 1_717_000_000
    stamps = now - np.cumsum(rng.integers(1, 600, history))[::-1]
    picks = rng.integers(0, len(item_ids), history + candidates)
    clicks = [{"item_id": item_ids[i], "timestamp": int(t)} for i, t in zip(picks[:history], stamps, strict=True)]
    return {"history": clicks, "timestamp": now, "candidates": [item_ids[i] for i in picks[history:]]}


def _fastest_ms(fn: Callable[[], object], budget_s: float = 0.5) -> float:
    """Fastest of repeated calls in ms (the least disturbed on a shared machine); at least 5 calls."""
    fn()
    times = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times)) * 1000


def request_cost(model: Any, body: dict[str, Any]) -> dict[str, float]:
    """ms to encode one request (ids -> rows and buckets, clicks -> ages) and to score it, one torch thread."""
    import torch

    from seqctr.serving.deployments import prepare_job, score_jobs
    from seqctr.serving.schemas import ScoreRequest

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        payload = ScoreRequest.model_validate(body).payload()
        job = prepare_job(model, payload)  # the first call builds the index's lookup table
        encode_ms = _fastest_ms(lambda: prepare_job(model, payload))
        score_ms = _fastest_ms(lambda: score_jobs(model.model, [job]))
    finally:
        torch.set_num_threads(threads)
    return {
        "encode_ms": round(encode_ms, 3),
        "score_ms": round(score_ms, 3),
        "request_ms": round(encode_ms + score_ms, 3),
    }


def request_at_sizes(sizes: list[int], text_dim: int, base: str | None) -> list[dict[str, Any]]:
    """One request's encode + score time with an untrained model over catalogues of `sizes` items."""
    import torch

    from seqctr.platform.config import load_config
    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex
    from seqctr.platform.model.predictor import LoadedModel

    cfg = load_config(base, [f"model.text={'true' if text_dim else 'false'}"])
    out = []
    for n in sizes:
        index = ItemIndex.from_ids([f"i{k:07d}" for k in range(n)])
        table = np.random.default_rng(0).normal(size=(len(index), text_dim)).astype(np.float32) if text_dim else None
        torch.manual_seed(0)
        model = build_model(cfg.model, len(index), table, text_dim=text_dim or None).eval()
        loaded = LoadedModel(model, cfg, index, {}, Path("."), torch.device("cpu"))
        start = time.perf_counter()
        served = serving_model(loaded)
        body = request_body(index.ids[2:], 50, 100)
        cost = request_cost(served, body)
        out.append({"items": n, **cost, "setup_s": round(time.perf_counter() - start, 2)})
        log(f"request at {n:,} items: encode {cost['encode_ms']:.2f} ms, score {cost['score_ms']:.2f} ms")
        del model, loaded, served, table
    return out


# ----------------------------------------------------------------------------- report


def growth(rows: list[dict[str, Any]], key: str = "seconds") -> dict[str, list[float | None]]:
    """Per stage: exponent k of `key` ~ events^k between consecutive sizes."""
    out: dict[str, list[float | None]] = {}
    for stage in STAGES:
        series = [r for r in rows if r["stage"] == stage]
        ks: list[float | None] = []
        for a, b in zip(series, series[1:], strict=False):
            if a.get(key) and b.get(key) and b["events"] != a["events"]:
                ks.append(round(math.log(b[key] / a[key]) / math.log(b["events"] / a["events"]), 2))
            else:
                ks.append(None)
        out[stage] = ks
    return out


def print_table(rows: list[dict[str, Any]], requests: list[dict[str, Any]], grown: dict[str, Any]) -> None:
    print(
        f"{'events':>9} {'items':>9} {'stage':<10} {'s':>8} {'rows/s':>10} "
        f"{'RSS self MB':>11} {'RSS tree MB':>11} {'MB written':>10}"
    )
    for r in rows:
        rate = f"{r['rows_per_s']:,}" if r.get("rows_per_s") else "-"
        written = f"{r['bytes'] / 2**20:.1f}" if r.get("bytes") is not None else "-"
        print(
            f"{r['events']:>9,} {r['items']:>9,} {r['stage']:<10} {r['seconds']:>8.2f} {rate:>10} "
            f"{r['rss_self_mb']:>11} {r['rss_tree_mb']:>11} {written:>10}"
        )
    print("growth exponent of time between sizes (1 = linear):")
    for stage, ks in grown.items():
        print(f"  {stage:<10} {ks}")
    print(f"{'items':>9} {'encode ms':>10} {'score ms':>9} {'request ms':>11}")
    for r in requests:
        print(f"{r['items']:>9,} {r['encode_ms']:>10.3f} {r['score_ms']:>9.3f} {r['request_ms']:>11.3f}")
    if len(requests) > 1:
        ratio = requests[-1]["request_ms"] / requests[0]["request_ms"]
        print(f"request at {requests[-1]['items']:,} / {requests[0]['items']:,} items: {ratio:.2f}x (bar <= 1.5)")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    pairs = [part.split(":") for part in text.split(",") if part]
    return [(int(e), int(i)) for e, i in pairs]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help=f"EVENTS:ITEMS,... (default {FULL_SIZES})")
    parser.add_argument(
        "--request-items", default=None, help=f"catalogue sizes for one request (default {REQUEST_ITEMS})"
    )
    parser.add_argument("--text", choices=("tiny", "off"), default="tiny", help="tiny random BERT, or model.text off")
    parser.add_argument("--config", default=None, help="base config (default: the embedded default)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--work-dir", default=None, help="where logs, samples and runs go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help=f"toy sizes ({QUICK_SIZES}), text off")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.request_items = args.request_items or QUICK_REQUEST_ITEMS
        args.text = "off"
    sizes = parse_sizes(args.sizes or FULL_SIZES)
    request_items = [int(s) for s in (args.request_items or REQUEST_ITEMS).split(",")]

    import ray

    from seqctr.platform.runtime import init_ray

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-scale-"))
    started = not ray.is_initialized()  # a caller's Ray (the test session's) is joined and left running
    init_ray(num_cpus=args.num_cpus, include_dashboard=False)
    rows: list[dict[str, Any]] = []
    text_dim = 0
    try:
        for events, items in sizes:
            folder = work / f"e{events}-i{items}"
            shutil.rmtree(folder, ignore_errors=True)
            log(f"=== {events:,} events, {items:,} items in {folder}")
            rows.extend(run_size(folder, events, items, args.text, args.config))
            if args.out:  # what is done so far survives a later failure
                Path(args.out).write_text(json.dumps({"partial": True, "stages": rows}, indent=2) + "\n")
            text_dim = rows[-1]["text_dim"]  # the request timing below uses the pipeline's text size
    finally:
        if started:
            ray.shutdown()
    requests = request_at_sizes(request_items, text_dim, args.config)
    result = {
        "sizes": [{"events": e, "items": i} for e, i in sizes],
        "text": args.text,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "stages": rows,
        "growth": growth(rows),
        "rss_growth": growth(rows, "rss_tree_mb"),
        "requests": requests,
        "request_ratio": round(requests[-1]["request_ms"] / requests[0]["request_ms"], 3)
        if len(requests) > 1
        else None,
    }
    print_table(rows, requests, result["growth"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
