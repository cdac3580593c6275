"""Item-embedding throughput at scale: `embed_items` (Ray Data actor pool) against a bare encoder.

    .venv/bin/python bench/embed_speed.py                       # 50k vs 10k titles, packaged MiniLM
    .venv/bin/python bench/embed_speed.py --items 5000 --small 1000 --model tiny --concurrency 2

Steady state: after a warm-up run, `embed_items` runs on `--small` and on `--items` titles (fresh actors
each time); the difference of the two wall times is the cost of the extra titles alone, so actor start-up,
model load, Ray Data planning and the fixed part of the write cancel out:
steady items/s = (items - small) / (T(items) - T(small)). The bare baseline is the same `TextEncoder`
called in this process on the same titles with torch threads = the Ray CPUs (the pool's total
threads: actors x threads per actor). Both sides tokenise and sort batches by length the same way.
Also printed: end-to-end items/s of the big run, its start-up (time to the first block) and the cached
re-run. Load averages are printed with each phase: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from seqctr.platform.config import EmbedConfig  # noqa: E402
from seqctr.platform.data.embeddings import TextEncoder, embed_items  # noqa: E402

ADJECTIVES = ["red", "wireless", "organic", "vintage", "compact", "premium", "waterproof", "classic", "smart"]
NOUNS = ["running shoes", "headphones", "coffee beans", "leather wallet", "camping tent", "desk lamp",
         "yoga mat", "chef knife", "backpack", "board game", "sunglasses", "water bottle"]  # fmt: skip
EXTRAS = ["for men", "for kids", "2-pack", "with free shipping", "limited edition", "XL", "in blue", "",
          "with a long description of its materials, its dimensions and how to take care of it"]  # fmt: skip


def synthetic_titles(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(EXTRAS)} #{i}".strip() for i in range(n)]


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def bare_items_per_s(encoder: TextEncoder, titles: list[str], batch_size: int, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder.encode(titles[: batch_size * 4], batch_size=batch_size)  # warm-up
        start = time.perf_counter()
        encoder.encode(titles, batch_size=batch_size)
        return len(titles) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def ray_run(root: Path, titles: list[str], cfg_kwargs: dict) -> tuple[dict, dict]:
    """embed_items on a fresh table of `titles`, then the cached re-run."""
    items = root / f"items-{len(titles)}.parquet"
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(len(titles))], "text": titles}), items)
    cfg = EmbedConfig(out=str(root / f"embeddings-{len(titles)}"), **cfg_kwargs)
    return embed_items(str(items), cfg), embed_items(str(items), cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000, help="titles of the big run")
    parser.add_argument("--small", type=int, default=10_000, help="titles of the small run (subtracted)")
    parser.add_argument("--bare-items", type=int, default=None, help="titles the bare encoder embeds (default --items)")
    parser.add_argument("--model", default="packaged")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None, help="encoder actors (default: from the CPUs)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray = bare threads")
    args = parser.parse_args()
    if not 0 < args.small < args.items:
        parser.error("need 0 < --small < --items")

    import ray

    from seqctr.platform.runtime import init_ray

    titles = synthetic_titles(args.items)
    cfg_kwargs = {"model": args.model, "batch_size": args.batch_size, "max_length": args.max_length}
    if args.concurrency is not None:
        cfg_kwargs["concurrency"] = args.concurrency
    loads = {"start": load()}

    encoder = TextEncoder(args.model, max_length=args.max_length)
    bare = bare_items_per_s(encoder, titles[: args.bare_items or args.items], args.batch_size, args.cpus)
    loads["after_bare"] = load()
    del encoder

    init_ray(num_cpus=args.cpus, include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
            ray_run(Path(tmp), titles[: min(256, args.small)], cfg_kwargs)  # warm-up: worker start, imports
            small, _ = ray_run(Path(tmp), titles[: args.small], cfg_kwargs)
            loads["after_small"] = load()
            big, cached = ray_run(Path(tmp), titles, cfg_kwargs)
            loads["after_big"] = load()
    finally:
        ray.shutdown()

    extra_s = big["seconds"] - small["seconds"]
    steady = (args.items - args.small) / extra_s if extra_s > 0 else float("nan")  # nan: too noisy a run
    result = {
        "items": args.items, "small": args.small, "model": args.model, "dim": big["dim"],
        "batch_size": args.batch_size, "max_length": args.max_length, "cpus": args.cpus,
        "actors": big["actors"], "threads_per_actor": big["threads_per_actor"],
        "bare_items_per_s": round(bare, 1), "ray_steady_items_per_s": round(steady, 1),
        "ratio_steady_vs_bare": round(steady / bare, 3),
        "ray_end_to_end_items_per_s": round(big["items_per_s"], 1),
        "ratio_end_to_end_vs_bare": round(big["items_per_s"] / bare, 3),
        "seconds_small": round(small["seconds"], 2), "seconds_big": round(big["seconds"], 2),
        "first_block_s": big["first_block_s"], "cached_rerun_ms": round(cached["seconds"] * 1000, 1),
        "loadavg": loads,
    }  # fmt: skip
    print(f"embed: steady {steady:,.1f} items/s through Ray Data ({big['actors']} actor(s) x "
          f"{big['threads_per_actor']} thread(s)) = {result['ratio_steady_vs_bare']:.2f}x the bare encoder at "
          f"{args.cpus} threads ({bare:,.1f} items/s); end to end {big['items_per_s']:,.1f} items/s "
          f"({result['ratio_end_to_end_vs_bare']:.2f}x), start-up {big['first_block_s']:.1f}s, "
          f"cached re-run {result['cached_rerun_ms']} ms; load {loads}")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
