"""How much float rounding alone moves val AUC: why 1 vs 2 workers are compared at the gradient, not the AUC.

    .venv/bin/python bench/rounding_chaos.py                    # the tiny config, 2 epochs
    .venv/bin/python bench/rounding_chaos.py --lr 0.02,0.005

One process, the same encoded tiny splits, the same batch order and augmentation draws. Each epoch is
trained with `loop.micro_step` three ways: the whole-batch gradient (1 worker), the mean of the two
half-batch gradients of `part=(rank, 2)` (what DDP's all-reduce gives 2 workers with
train.sharding=replicate; equal to the whole-batch gradient up to rounding), and the whole batch with the
weights' seed moved by 1 and 2 (the spread a seed gives). Prints val AUC per way: on the tiny config
(125 steps an epoch) the first two differ by about 0.01 and the seeds by about 0.04, so a run-level
1-vs-2-worker AUC test needs few steps (tests/training/test_trainer.py) and the exact check is
tests/training/test_loop.py's gradient test (issue #19).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from train_throughput import _concat_numpy, encoded_split


def train_and_score(cfg: Any, assets: Any, data: dict[str, dict[str, torch.Tensor]], halves: bool, seed: int) -> float:
    from seqctr.platform.model.features import ItemIndex
    from seqctr.platform.model.metrics import auc
    from seqctr.training.assets import build_model_from_assets
    from seqctr.training.ingest import to_model_inputs
    from seqctr.training.loop import make_optimizer, micro_step, optimizer_step

    torch.manual_seed(cfg.train.seed + seed)
    model = build_model_from_assets(cfg, assets)
    optimizer = make_optimizer(model, cfg)
    buckets = torch.as_tensor(ItemIndex.from_bytes(assets.index_bytes).buckets(cfg.model.id_buckets))
    generator, device, train = torch.Generator(), torch.device("cpu"), data["train"]
    n, size = train["label"].shape[0], cfg.train.batch_size
    for epoch in range(cfg.train.epochs):
        generator.manual_seed(epoch)
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(100 + epoch))
        for lo in range(0, n, size):
            batch = {k: v[order[lo : lo + size]] for k, v in train.items()}
            optimizer.zero_grad(set_to_none=True)
            if not halves:
                micro_step(model, batch, cfg, buckets, device, generator)
            else:
                state, grads = generator.get_state(), []
                for rank in (0, 1):
                    generator.set_state(state)  # every rank augments the whole batch alike
                    model.zero_grad(set_to_none=True)
                    micro_step(model, batch, cfg, buckets, device, generator, part=(rank, 2))
                    grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
                for name, p in model.named_parameters():  # a parameter only one half reached: the other adds 0
                    parts = [g[name] for g in grads if name in g]
                    p.grad = sum(parts) / 2 if parts else None
            optimizer_step(model, optimizer, cfg)
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(to_model_inputs(data["val"]))).numpy()
    return auc(data["val"]["label"].numpy(), prob)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"))
    parser.add_argument("--lr", default="", help="comma-separated learning rates (default: the config's)")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)

    from seqctr.platform.config import load_config, resolve_paths
    from seqctr.platform.data.synthetic import generate_synthetic
    from seqctr.platform.runtime import init_ray
    from seqctr.training.assets import prepare_assets
    from seqctr.training.trainer import ensure_samples, run_index

    init_ray()
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-rounding-"))
    cfg = resolve_paths(load_config(args.config, ["model.attention=true", "model.dropout=0.0"]), root)
    if not (root / "work" / "data").exists():
        generate_synthetic(cfg.data.synthetic, root / "work" / "data")
    ensure_samples(cfg)
    assets = prepare_assets(cfg, run_index(cfg, None))
    data = {}
    for split in ("train", "val"):
        ds = encoded_split(cfg, assets, split, 10**9)
        columns = tuple(ds.schema().names)
        data[split] = {k: torch.as_tensor(v) for k, v in _concat_numpy(ds, columns).items()}
    for lr in [float(x) for x in args.lr.split(",") if x] or [cfg.train.lr]:
        c = cfg.with_overrides({"train.lr": lr})
        row = {
            "whole batch": train_and_score(c, assets, data, halves=False, seed=0),
            "mean of halves": train_and_score(c, assets, data, halves=True, seed=0),
            "seed +1": train_and_score(c, assets, data, halves=False, seed=1),
            "seed +2": train_and_score(c, assets, data, halves=False, seed=2),
        }
        print(f"lr {lr}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
