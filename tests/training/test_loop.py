"""The training step issues no device->host synchronisation: on a GPU each one would stall the step.

CPU has no device to wait for, so the test counts the calls that would synchronise on CUDA (reading a
tensor's value on the host: item, tolist, bool/int/float, numpy, cpu) during one forward + backward
(+ augmentation and clipping) of the real model. The optimiser's own bookkeeping (AdamW's step count
is a host tensor) is left out: it is not a device tensor on CUDA either.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from seqctr.platform.config import ConfigError, ExperimentConfig
from seqctr.platform.model.ctr import build_model
from seqctr.training.loop import (
    early_stop_state,
    load_optimizer_state,
    lr_factor,
    make_optimizer,
    make_scheduler,
    micro_step,
    optimizer_step,
    steps_per_epoch,
)
from seqctr.training.trainer import best_checkpoint_path

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


def test_replicated_ranks_slices_of_a_global_batch_give_the_one_worker_gradient():
    """train.sharding=replicate: each rank augments the whole global batch with the generator every rank
    seeds alike and keeps its slice; DDP's mean of the ranks' gradients is then the 1-worker gradient, up
    to float rounding. (Val AUC after whole runs is the wrong place to check this on the tiny config:
    its training is chaotic, rounding alone moves it by ~0.01 and the seed by ~0.04.)"""
    cfg = ExperimentConfig().with_overrides(
        {
            "model.id_buckets": BUCKETS, "model.embed_dim": 8, "model.hidden_size": 16, "model.mlp_hidden": [16],
            "model.attention": True, "model.text": False, "model.dropout": 0.0,
            "train.drop_prob": 0.2, "train.replace_prob": 0.1, "train.truncate_prob": 0.2, "train.age_drop_prob": 0.1,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_ITEMS, None).train()
    bucket_table = torch.arange(NUM_ITEMS) % BUCKETS
    device = torch.device("cpu")

    def gradients(part: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        micro_step(model, batch(), cfg, bucket_table, device, torch.Generator().manual_seed(7), part=part)
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    whole = gradients(None)
    ranks = [gradients((rank, 2)) for rank in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) == set(whole)
    for name, grad in whole.items():
        mean = (ranks[0][name] + ranks[1][name]) / 2  # what DDP's all-reduce gives every rank
        assert torch.allclose(mean, grad, atol=1e-6, rtol=1e-5), name
    assert any(not torch.allclose(ranks[0][n], ranks[1][n]) for n in whole)  # the slices differ


# ----------------------------------------------------------------------------- fitting real data


def tiny(**overrides) -> ExperimentConfig:
    base = {"model.id_buckets": BUCKETS, "model.embed_dim": 8, "model.hidden_size": 16, "model.mlp_hidden": [16]}
    return ExperimentConfig().with_overrides({**base, "model.text": False, **overrides})


def test_lr_factor_at_a_few_steps():
    assert [lr_factor("constant", s, 10) for s in (0, 5, 99)] == [1.0, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 10) for s in (0, 5, 10, 20)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0, 0.0])  # steps past the end stay at the end
    # warmup_cosine: (s + 1) / 4 over the first 4 steps, then the cosine over the other 10.
    warm = [lr_factor("warmup_cosine", s, 14, warmup_steps=4) for s in (0, 1, 3, 4, 9, 14)]
    assert warm == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 0.0])
    assert lr_factor("warmup_cosine", 0, 10, 0) == lr_factor("cosine", 0, 10) == 1.0


def test_the_schedule_sets_the_rate_per_step_and_resumes_from_the_global_step():
    cfg = tiny(**{"train.lr_schedule": "cosine", "train.batch_size": 4, "train.epochs": 2, "train.lr": 0.1})
    assert steps_per_epoch(20, cfg) == 5  # 20 samples / batch 4: 10 steps in the run
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_ITEMS, None)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, train_samples=20)
    rates, saved = [], None
    for step in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if step == 4:  # the end of epoch 0: what a checkpoint keeps
            saved = copy.deepcopy(optimizer.state_dict())
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    resumed = make_optimizer(model, cfg)
    load_optimizer_state(resumed, saved, model)
    make_scheduler(resumed, cfg, train_samples=20, step=5)
    assert resumed.param_groups[0]["lr"] == pytest.approx(rates[5])
    # constant (the default) leaves the rate alone: no scheduler at all.
    constant = tiny(**{"train.lr": 0.1})
    fresh = make_optimizer(model, constant)
    assert make_scheduler(fresh, constant, train_samples=0) is None and fresh.param_groups[0]["lr"] == 0.1
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        tiny(**{"train.warmup_steps": 10})


def test_a_one_group_optimizer_state_resumes_with_embeddings_split_off_and_back():
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg.model, NUM_ITEMS, None).train()
    model.check_ranges = False
    one = make_optimizer(model, cfg)
    micro_step(model, batch(), cfg, torch.arange(NUM_ITEMS) % BUCKETS, torch.device("cpu"), torch.Generator())
    optimizer_step(model, one, cfg)
    saved = copy.deepcopy(one.state_dict())
    split_cfg = tiny(**{"train.embedding_weight_decay": 0.5})
    split = make_optimizer(model, split_cfg)
    assert [g["name"] for g in split.param_groups] == ["model", "embeddings"]
    load_optimizer_state(split, saved, model)
    assert [g["weight_decay"] for g in split.param_groups] == [cfg.train.weight_decay, 0.5]
    for p in model.parameters():  # every parameter keeps its own moments
        for slot in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(split.state[p][slot], one.state[p][slot])
    back = make_optimizer(model, cfg)
    load_optimizer_state(back, copy.deepcopy(split.state_dict()), model)
    assert [g["name"] for g in back.param_groups] == ["model"]
    assert all(torch.equal(back.state[p]["exp_avg"], one.state[p]["exp_avg"]) for p in model.parameters())
    other = copy.deepcopy(saved)
    other["param_groups"][0]["params"] = other["param_groups"][0]["params"][:-1]  # another model
    with pytest.raises(ValueError, match="optimiser groups .* do not fit this model"):
        load_optimizer_state(make_optimizer(model, cfg), other, model)


def epochs(*rows: tuple[float, float]) -> list[dict]:
    return [{"epoch": e, "val_auc": auc, "val_logloss": logloss} for e, (auc, logloss) in enumerate(rows)]


def test_early_stopping_on_logloss_picks_the_epoch_with_the_lowest_val_logloss():
    # AUC peaks at epoch 1, logloss bottoms out at epoch 2 (lower is better), epoch 3 is NaN (never best).
    history = epochs((0.70, 0.50), (0.75, 0.45), (0.74, 0.40), (float("nan"), float("nan")), (0.73, 0.42))
    best, best_epoch, bad = early_stop_state(history, "val_logloss")
    assert (best, best_epoch, bad) == (-0.40, 2, 2)
    assert early_stop_state(history, "val_auc") == (0.75, 1, 3)
    assert early_stop_state([], "val_logloss") == (-math.inf, -1, 0)
    # The best checkpoint of a run follows the same metric and direction; the NaN epoch is never picked.
    result = SimpleNamespace(
        best_checkpoints=[(SimpleNamespace(path=f"/ray/epoch_{m['epoch']:03d}"), m) for m in history],
        checkpoint=None,
        error=None,
    )
    assert best_checkpoint_path(result, "/run", "val_logloss") == "/run/epoch_002"
    assert best_checkpoint_path(result, "/run") == "/run/epoch_001"  # val_auc, the default
