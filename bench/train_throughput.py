"""Training throughput: the Ray Train pipeline against a bare PyTorch loop, 2 workers vs 1, data sizes.

    .venv/bin/python bench/train_throughput.py --config configs/default.yaml --sizes 100000,300000,1000000

One synthetic log (the config's, grown to the largest size) is generated, built into samples and
embedded once; every measurement trains the same model on the first N train samples:
- `ray_1w`: `seqctr`'s TorchTrainer, 1 worker, Ray Data ingest (the encoded split streamed through
  `get_dataset_shard` + `iter_torch_batches` with a local shuffle), augmentation from the config;
- `bare`: the same samples already encoded and held in memory as tensors, the same model, batch
  size, augmentation and thread count, a plain `for` loop in this process;
- `ray_2w`: 2 workers of 1 CPU each (DDP over gloo) against `ray_1w` with 1 thread;
- `replicate_*`: the same 1 vs 2 workers with train.sharding=replicate (the same steps at any worker count).
samples/s are training-step throughput (the worker's epoch loop, val excluded). Prints JSON with
both rates and the ratios; the issue's bar is ray_1w / bare >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def prepare(cfg: Any, events: int) -> tuple[Any, Any]:
    """Generate (once), build samples (cached), embed items (cached); return (cfg, assets)."""
    from seqctr.demo import _generate
    from seqctr.training.assets import prepare_assets
    from seqctr.training.trainer import ensure_samples, run_index

    cfg = cfg.with_overrides({"data.synthetic.events": events})
    _generate(cfg)
    ensure_samples(cfg)
    return cfg, prepare_assets(cfg, run_index(cfg, None))


def encoded_split(cfg: Any, assets: Any, split: str, rows: int) -> Any:
    from seqctr.platform.data.samples import read_samples
    from seqctr.training.ingest import encode_dataset

    ds = read_samples(cfg.data.samples, split).limit(rows)
    return encode_dataset(ds, assets.index_bytes, cfg.model.id_buckets, cfg.data.max_seq_len).materialize()


def ray_epoch(cfg: Any, assets: Any, train_ds: Any, val_ds: Any, workers: int, threads: int) -> dict[str, float]:
    """One epoch through seqctr's TorchTrainer; samples/s as the worker measured its epoch loop."""
    from seqctr.platform.model.checkpoint import read_checkpoint
    from seqctr.training.trainer import make_trainer

    run_cfg = cfg.with_overrides(
        {
            "train.num_workers": workers,
            "train.cpus_per_worker": 1,
            "train.torch_threads": threads,
            "train.epochs": 1,
            "train.run_name": f"bench-{workers}w-{threads}t-{train_ds.count()}-{time.time_ns()}",
        }
    )
    started, started_unix = time.perf_counter(), time.time()
    result = make_trainer(run_cfg, assets, {"train": train_ds, "val": val_ds}).fit()
    if result.error:
        raise result.error
    wall = time.perf_counter() - started
    epoch = read_checkpoint(result.checkpoint.path).train_state["history"][-1]
    rows = train_ds.count()
    epoch_seconds = rows / epoch["samples_per_s"]
    # Where fit()'s wall time goes: Ray Train's start (controller, placement group, worker processes,
    # torch process group, dataset shards) until the loop runs; seqctr's model build and DDP wrap; the
    # epoch; and the rest (validation, checkpoint upload, shutdown).
    until_loop = epoch["loop_entered_unix"] - started_unix
    startup = {
        "ray_train_start_s": until_loop,
        "model_build_s": epoch["startup_model_s"],
        "prepare_s": epoch["startup_prepare_s"],
        "epoch_s": epoch_seconds,
        "val_checkpoint_teardown_s": wall
        - until_loop
        - epoch["startup_model_s"]
        - epoch["startup_prepare_s"]
        - epoch_seconds,
    }
    return {
        "samples_per_s": round(epoch["samples_per_s"], 1),
        "epoch_seconds": round(epoch_seconds, 2),
        "fit_wall_seconds": round(wall, 2),
        "val_auc": round(epoch["val_auc"], 4),
        "fit_breakdown_s": {k: round(v, 2) for k, v in startup.items()},
    }


def bare_epoch(cfg: Any, assets: Any, train_ds: Any, threads: int) -> dict[str, float]:
    """The same training step (loop.train_step) over in-memory tensors: no Ray, no data pipeline, no DDP."""
    from seqctr.platform.model.features import ItemIndex
    from seqctr.training.assets import build_model_from_assets
    from seqctr.training.loop import make_optimizer, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    columns = ("hist_idx", "hist_bucket", "hist_age", "hist_len", "target_idx", "target_bucket", "label")
    data = {k: torch.as_tensor(v) for k, v in _concat_numpy(train_ds, columns).items()}
    model = build_model_from_assets(cfg, assets)
    optimizer = make_optimizer(model, cfg)
    index = ItemIndex.from_bytes(assets.index_bytes)
    bucket_table = torch.as_tensor(index.buckets(cfg.model.id_buckets), dtype=torch.long)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    n = data["label"].shape[0]
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator)
    for lo in range(0, n, cfg.train.batch_size):
        rows = order[lo : lo + cfg.train.batch_size]
        train_step(model, optimizer, {k: v[rows] for k, v in data.items()}, cfg, bucket_table, device, generator)
    seconds = time.perf_counter() - start
    return {"samples_per_s": round(n / seconds, 1), "epoch_seconds": round(seconds, 2)}


def _concat_numpy(ds: Any, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for batch in ds.select_columns(list(columns)).iter_batches(batch_size=8192, batch_format="numpy"):
        for c in columns:
            parts[c].append(batch[c])
    return {c: np.concatenate(v) for c, v in parts.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a.b=value override")
    parser.add_argument("--sizes", default="100000,300000,1000000", help="train samples per size point")
    parser.add_argument("--ratio-size", type=int, default=50_000, help="train samples for ray vs bare")
    parser.add_argument("--val-rows", type=int, default=5_000)
    parser.add_argument("--work-dir", default=None, help="default: a temp dir")
    args = parser.parse_args(argv)

    import ray

    from seqctr.platform.config import load_config, resolve_paths
    from seqctr.platform.runtime import init_ray

    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-bench-train-"))
    cfg = resolve_paths(load_config(args.config, args.overrides), work)
    need = max([*sizes, args.ratio_size])
    # ~80% of events become train samples; grow the log so the largest size point fits.
    events = max(cfg.data.synthetic.events, int(need / cfg.data.train_fraction * 1.05))
    init_ray(num_cpus=os.cpu_count())
    t0 = time.perf_counter()
    cfg, assets = prepare(cfg, events)
    log(f"data ready ({events} events) in {time.perf_counter() - t0:.0f}s under {work}")
    val_ds = encoded_split(cfg, assets, "val", args.val_rows)
    threads = max(1, int(cfg.train.torch_threads or cfg.train.cpus_per_worker))

    train_ds = encoded_split(cfg, assets, "train", args.ratio_size)
    bare = bare_epoch(cfg, assets, train_ds, threads)
    log(f"bare loop: {bare}")
    ray_1w = ray_epoch(cfg, assets, train_ds, val_ds, workers=1, threads=threads)
    log(f"ray 1 worker: {ray_1w}")
    ray_2w = ray_epoch(cfg, assets, train_ds, val_ds, workers=2, threads=1)
    ray_1w_1t = ray_1w if threads == 1 else ray_epoch(cfg, assets, train_ds, val_ds, workers=1, threads=1)
    log(f"ray 2 workers: {ray_2w}")
    # train.sharding=replicate: both workers read the split in the 1-worker order (same steps, same model)
    replicated = cfg.with_overrides({"train.sharding": "replicate"})
    rep_1w = ray_epoch(replicated, assets, train_ds, val_ds, workers=1, threads=1)
    rep_2w = ray_epoch(replicated, assets, train_ds, val_ds, workers=2, threads=1)
    log(f"replicate: 1 worker {rep_1w}, 2 workers {rep_2w}")

    by_size = {}
    for size in sizes:
        ds = encoded_split(cfg, assets, "train", size)
        by_size[ds.count()] = ray_epoch(cfg, assets, ds, val_ds, workers=1, threads=threads)
        log(f"size {size}: {by_size[ds.count()]}")
    ray.shutdown()
    smallest = min(by_size)
    result = {
        "config": args.config,
        "threads": threads,
        "cpus": os.cpu_count(),
        "ratio_samples": train_ds.count(),
        "bare": bare,
        "ray_1_worker": ray_1w,
        "ray_over_bare": round(ray_1w["samples_per_s"] / bare["samples_per_s"], 3),
        "ray_2_workers": ray_2w,
        "two_over_one_worker": round(ray_2w["samples_per_s"] / ray_1w_1t["samples_per_s"], 3),
        "val_auc_2w_minus_1w": round(ray_2w["val_auc"] - ray_1w_1t["val_auc"], 4),
        "replicate_1_worker": rep_1w,
        "replicate_2_workers": rep_2w,
        "replicate_two_over_one_worker": round(rep_2w["samples_per_s"] / rep_1w["samples_per_s"], 3),
        "replicate_val_auc_2w_minus_1w": round(rep_2w["val_auc"] - rep_1w["val_auc"], 4),
        "epoch_by_size": {
            n: {
                **r,
                "time_vs_smallest": round(r["epoch_seconds"] / by_size[smallest]["epoch_seconds"], 2),
                "size_vs_smallest": round(n / smallest, 2),
            }
            for n, r in by_size.items()
        },
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
