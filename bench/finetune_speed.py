"""Fine-tuning step time: the top BERT layer over the cached output of the frozen layers, against the
whole encoder run per step (the bare baseline), same model, batch and thread count, in one run.

    .venv/bin/python bench/finetune_speed.py                    # packaged MiniLM, 2000 synthetic items
    .venv/bin/python bench/finetune_speed.py --steps 5 --trainable-layers 2

Batches are drawn like the default config's (512 samples, 30-item histories over the whole catalogue),
so each step sends the batch's unique items through BERT. Prints ms per step for both paths (the
cached path's one-off cache build reported apart) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from seqctr.platform.config import ModelConfig  # noqa: E402
from seqctr.platform.data.embeddings import load_bert, tokenize_texts  # noqa: E402
from seqctr.platform.data.synthetic import GENERIC_WORDS, category_vocabulary  # noqa: E402
from seqctr.platform.model.ctr import CTRModel  # noqa: E402


def item_titles(n: int, seed: int = 0) -> list[str]:
    """Titles like the synthetic log's: 3-6 words of one category, sometimes a generic word."""
    rng = np.random.default_rng(seed)
    vocab = category_vocabulary(20, seed)
    titles = []
    for i in range(n):
        words = list(rng.choice(vocab[i % len(vocab)][1], int(rng.integers(3, 7)), replace=False))
        if rng.random() < 0.35:
            words[0] = str(rng.choice(GENERIC_WORDS))
        titles.append(" ".join(words))
    return titles


def make_model(name: str, items: int, trainable: int, cache: bool) -> CTRModel:
    titles = [""] * 2 + item_titles(items)  # rows 0 and 1: padding and unknown
    ids, mask = tokenize_texts(name, titles, 64)
    bert = load_bert(name)
    cfg = ModelConfig(bert_trainable_layers=trainable)
    torch.manual_seed(0)
    model = CTRModel(
        cfg,
        len(titles),
        bert.config.hidden_size,
        bert=bert,
        item_tokens=(torch.from_numpy(ids), torch.from_numpy(mask)),
    )
    if not cache:
        model.items.frozen_cache_bytes = 0
    return model.train()


def batches(items: int, steps: int, batch: int, length: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        hist = torch.randint(2, items + 2, (batch, length), generator=g)
        target = torch.randint(2, items + 2, (batch,), generator=g)
        out.append(
            {
                "hist_idx": hist,
                "hist_bucket": hist % 1000 + 1,
                "hist_len": torch.full((batch,), length),
                "target_idx": target,
                "target_bucket": target % 1000 + 1,
                "label": (torch.rand(batch, generator=g) < 0.2).float(),
            }
        )
    return out


def time_steps(model: CTRModel, data: list[dict[str, torch.Tensor]]) -> list[float]:
    optimizer = torch.optim.AdamW(model.param_groups(3e-3, 2e-5, 0.0))
    seconds = []
    for batch in data:
        start = time.perf_counter()
        logits = model({k: v for k, v in batch.items() if k != "label"})
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--history", type=int, default=30)
    parser.add_argument("--trainable-layers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = batches(args.items, args.steps, args.batch_size, args.history)
    bare = time_steps(make_model(args.model, args.items, args.trainable_layers, cache=False), data)
    cached_model = make_model(args.model, args.items, args.trainable_layers, cache=True)
    start = time.perf_counter()
    cached_model.items._frozen_hidden()
    build = time.perf_counter() - start
    cached = time_steps(cached_model, data)
    out = {
        "trainable_layers": args.trainable_layers,
        "items": args.items,
        "threads": args.threads,
        "whole_encoder_ms_per_step": round(1000 * float(np.median(bare)), 1),
        "cached_ms_per_step": round(1000 * float(np.median(cached)), 1),
        "cache_build_s": round(build, 2),
        "speedup": round(float(np.median(bare) / np.median(cached)), 2),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
