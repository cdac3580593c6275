"""Speed of the synthetic log generator, against a bare Parquet write of the same number of rows.

    .venv/bin/python bench/generate_speed.py                      # the default config (300k events)
    .venv/bin/python bench/generate_speed.py --events 5000000 --no-baseline

Also prints the calibration figures the project relies on: the oracle AUC (of `p_true`) and how much
of the oracle's lift an observable-feature baseline reaches on the newest 10% by time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from observable_baseline import observable_baseline  # bench/ is on sys.path when run as a script

from seqctr.platform.config import SyntheticConfig
from seqctr.platform.data.synthetic import generate_synthetic, oracle_auc


def bare_write_events_per_s(n_rows: int, chunk: int, out: Path) -> float:
    """The floor: write prepared random columns of the same schema, no generation logic."""
    rng = np.random.default_rng(0)
    users = pa.array([f"u{i:06d}" for i in range(2000)])
    items = pa.array([f"i{i:06d}" for i in range(2000)])
    t0 = time.perf_counter()
    for k, lo in enumerate(range(0, n_rows, chunk)):
        n = min(chunk, n_rows - lo)
        table = pa.table(
            {
                "user_id": users.take(pa.array(rng.integers(0, 2000, n))),
                "item_id": items.take(pa.array(rng.integers(0, 2000, n))),
                "timestamp": pa.array(np.sort(rng.integers(0, 5_000_000, n)) + 1_704_067_200),
                "label": pa.array(rng.integers(0, 2, n).astype(np.int8)),
                "p_true": pa.array(rng.random(n)),
                "session": pa.array(np.arange(n, dtype=np.int32) // 20),
                "intent": pa.array(["sports"] * 20).take(pa.array(rng.integers(0, 20, n))),
            }
        )
        pq.write_table(table, out / f"part-{k:05d}.parquet")
    return n_rows / (time.perf_counter() - t0)


def main() -> None:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("users", "items", "events", "categories", "seed", "chunk_events"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--no-baseline", action="store_true", help="Skip the AUC calibration figures.")
    args = parser.parse_args()
    cfg = SyntheticConfig(
        users=args.users,
        items=args.items,
        events=args.events,
        categories=args.categories,
        seed=args.seed,
        chunk_events=args.chunk_events,
    )
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic(cfg.model_copy(update={"events": 1000}), Path(tmp) / "warmup")
        report = generate_synthetic(cfg, Path(tmp) / "data")
        (Path(tmp) / "bare").mkdir()
        bare = bare_write_events_per_s(cfg.events, cfg.chunk_events, Path(tmp) / "bare")
        result = {
            "events": report["events"],
            "files": report["files"],
            "seconds": round(report["seconds"], 3),
            "events_per_s": round(report["events_per_s"]),
            "bare_write_events_per_s": round(bare),
            "ratio_vs_bare_write": round(report["events_per_s"] / bare, 3),
        }
        if not args.no_baseline:
            result["oracle_auc"] = round(oracle_auc(report["events_path"]), 4)
            base = observable_baseline(report["events_path"], report["items_path"])
            result.update(
                {
                    "test_oracle_auc": round(base["oracle_auc"], 4),
                    "test_baseline_auc": round(base["auc"], 4),
                    "lift_ratio": round(base["ratio"], 3),
                }
            )
    print(
        f"generate: {result['events_per_s']:,} events/s "
        f"({result['ratio_vs_bare_write']:.2f}x a bare Parquet write of the same rows)"
    )
    if "lift_ratio" in result:
        print(
            f"oracle AUC {result['oracle_auc']}; observable baseline on the newest 10%: "
            f"AUC {result['test_baseline_auc']} vs oracle {result['test_oracle_auc']}, "
            f"lift ratio {result['lift_ratio']}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
