"""The training step issues no device->host synchronisation: on a GPU each one would stall the step.

CPU has no device to wait for, so the test counts the calls that would synchronise on CUDA (reading a
tensor's value on the host: item, tolist, bool/int/float, numpy, cpu) during one forward + backward
(+ augmentation and clipping) of the real model. The optimiser's own bookkeeping (AdamW's step count
is a host tensor) is left out: it is not a device tensor on CUDA either.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.ctr import build_model
from seqctr.training.loop import micro_step, optimizer_step

NUM_ITEMS, BUCKETS, B, L = 50, 97, 16, 6
SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu")


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    idx = torch.randint(2, NUM_ITEMS, (B, L), generator=g) * (torch.arange(L) < lengths[:, None])
    target = torch.randint(2, NUM_ITEMS, (B,), generator=g)
    return {
        "hist_idx": idx,
        "hist_bucket": idx % BUCKETS,
        "hist_age": (idx > 0).long() * 3,
        "hist_len": lengths,
        "target_idx": target,
        "target_bucket": target % BUCKETS,
        "label": (torch.rand(B, generator=g) < 0.3).float(),
    }


@contextlib.contextmanager
def count_host_reads() -> Counter:
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counting(name):
        def call(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)

        return call

    for name in SYNCING:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def test_a_training_step_reads_nothing_back_from_the_device():
    cfg = ExperimentConfig().with_overrides(
        {
            "model.id_buckets": BUCKETS, "model.embed_dim": 8, "model.hidden_size": 16, "model.mlp_hidden": [16],
            "model.attention": True, "model.text": False,
            "train.drop_prob": 0.2, "train.replace_prob": 0.1, "train.truncate_prob": 0.2, "train.age_drop_prob": 0.1,
        }
    )  # fmt: skip
    model = build_model(cfg.model, NUM_ITEMS, None).train()
    model.check_ranges = False  # as the training loop sets it
    bucket_table = torch.arange(NUM_ITEMS) % BUCKETS
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    device = torch.device("cpu")
    micro_step(model, batch(), cfg, bucket_table, device, generator)  # warm-up: lazy init may read values
    with count_host_reads() as counts:
        loss = micro_step(model, batch(), cfg, bucket_table, device, generator)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    assert dict(counts) == {}
    optimizer_step(model, optimizer, cfg)
    assert torch.isfinite(loss)  # (a read, after the step: what the epoch loop does once per epoch)


def test_range_checks_are_on_by_default_for_serving_and_evaluation():
    cfg = ExperimentConfig().with_overrides({"model.id_buckets": BUCKETS, "model.text": False})
    model = build_model(cfg.model, NUM_ITEMS, None).eval()
    bad = {**batch(), "hist_bucket": batch()["hist_bucket"] + BUCKETS}
    with count_host_reads() as counts, contextlib.suppress(ValueError):
        model({k: v for k, v in bad.items() if k != "label"})
    assert counts["tolist"] == 1  # the one sync of the range checks
