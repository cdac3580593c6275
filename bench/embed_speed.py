"""Item-embedding throughput: `embed_items` (Ray Data actor pool) against a bare in-process encoder.

    .venv/bin/python bench/embed_speed.py                # 2000 titles, packaged MiniLM, 1 actor
    .venv/bin/python bench/embed_speed.py --items 500 --concurrency 2 --model tiny

Prints items/s of the Ray job end to end (actor start + model load + encode + write), of the same
encoder called directly (encode only; with torch's default threads and with 1 thread, the share a
1-CPU Ray actor gets), their ratio, and the time of the cached re-run.
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
EXTRAS = ["for men", "for kids", "2-pack", "with free shipping", "limited edition", "XL", "in blue", ""]


def synthetic_titles(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(EXTRAS)} #{i}".strip() for i in range(n)]


def bare_items_per_s(encoder: TextEncoder, titles: list[str], batch_size: int, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder.encode(titles[:batch_size], batch_size=batch_size)  # warm-up
        start = time.perf_counter()
        encoder.encode(titles, batch_size=batch_size)
        return len(titles) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--model", default="packaged")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    import ray

    titles = synthetic_titles(args.items)
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        items = Path(tmp) / "items.parquet"
        pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(len(titles))], "text": titles}), items)
        cfg = EmbedConfig(
            model=args.model,
            out=str(Path(tmp) / "embeddings"),
            batch_size=args.batch_size,
            max_length=args.max_length,
            concurrency=args.concurrency,
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            ray_report = embed_items(str(items), cfg)
            cached = embed_items(str(items), cfg)
        finally:
            ray.shutdown()

    encoder = TextEncoder(args.model, max_length=args.max_length)
    bare_default = bare_items_per_s(encoder, titles, args.batch_size, torch.get_num_threads())
    bare_one = bare_items_per_s(encoder, titles, args.batch_size, 1)

    threads = torch.get_num_threads()
    result = {
        "items": len(titles), "model": args.model, "dim": ray_report["dim"], "batch_size": args.batch_size,
        "max_length": args.max_length, "concurrency": args.concurrency, "cpus": os.cpu_count(),
        "ray_items_per_s": round(ray_report["items_per_s"], 1), "ray_seconds": round(ray_report["seconds"], 2),
        f"bare_items_per_s_{threads}_threads": round(bare_default, 1), "bare_items_per_s_1_thread": round(bare_one, 1),
        "ratio_vs_bare": round(ray_report["items_per_s"] / bare_default, 3),
        "cached_rerun_ms": round(cached["seconds"] * 1000, 1),
    }  # fmt: skip
    print(f"embed: {result['ray_items_per_s']:,.1f} items/s through Ray Data end to end "
          f"({result['ratio_vs_bare']:.2f}x a bare in-process encode at {threads} threads, "
          f"{bare_default:,.1f} items/s; 1 thread {bare_one:,.1f}); "
          f"cached re-run {result['cached_rerun_ms']} ms")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
