"""GPU check: one short Ray Train run with `use_gpu=True` (bf16 autocast on CUDA), then the same on CPU.

    .venv/bin/python bench/gpu_check.py [--events 300000] [--epochs 1] [--batch-size 2048]

For a developer whose machine has a GPU (CI never runs it). Generates the default synthetic log,
embeds items with the packaged BERT on the GPU's node, trains, and prints JSON: the CUDA device,
samples/s and val AUC of the GPU run, and of a 1-worker CPU run on the same samples for the ratio.
Exits 3 at once when torch sees no CUDA device (a `use_gpu` run would wait forever for a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--skip-cpu", action="store_true", help="GPU run only")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: torch sees no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 3

    from seqctr.demo import _generate
    from seqctr.platform.config import load_config, resolve_paths
    from seqctr.platform.runtime import init_ray
    from seqctr.training.trainer import run_training

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-gpu-"))
    cfg = resolve_paths(load_config(args.config), work).with_overrides(
        {
            "data.synthetic.events": args.events,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.use_gpu": True,
            "train.cpus_per_worker": 4,
            "train.run_name": "gpu",
        }
    )
    init_ray()
    started = time.perf_counter()
    report = _generate(cfg)
    runs = {"gpu": run_training(cfg)}
    if not args.skip_cpu:
        cpu = cfg.with_overrides({"train.use_gpu": False, "train.run_name": "cpu"})
        runs["cpu"] = run_training(cpu)
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "events": args.events,
        "oracle_auc": report.get("oracle_auc"),
        **{
            name: {
                "samples_per_s": round(r["history"][-1]["samples_per_s"], 1),
                "val_auc": round(r["history"][-1]["val_auc"], 4),
                "test_auc": round(r["test"]["auc"], 4),
                "seconds": round(r["seconds"], 1),
            }
            for name, r in runs.items()
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if "cpu" in runs:
        out["gpu_over_cpu"] = round(out["gpu"]["samples_per_s"] / out["cpu"]["samples_per_s"], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
