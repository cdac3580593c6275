"""The Ray Train per-worker loop: build the model, train, evaluate exactly on val, checkpoint.

`train_loop_per_worker(loop_config)` is what TorchTrainer runs on every worker. The device comes
from Ray Train, DDP from `prepare_model`, data from `ray.train.get_dataset_shard`. Val metrics are
computed over the whole split: every worker gathers all predictions, so every worker makes the same
early-stopping decision and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from seqctr.platform.config import ExperimentConfig, config_from_dict
from seqctr.platform.model.checkpoint import SharedTables, read_checkpoint, save_checkpoint
from seqctr.platform.model.features import ItemIndex
from seqctr.platform.model.metrics import evaluate
from seqctr.training.assets import ModelAssets, build_model_from_assets, warm_start_state
from seqctr.training.augment import augment_history
from seqctr.training.ingest import to_model_inputs


def make_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    t = cfg.train
    lr = t.effective_lr
    groups = model.param_groups(lr, t.bert_lr, t.weight_decay, t.embedding_weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], model: nn.Module) -> None:
    """Restore a checkpoint's optimiser state, also across a change of train.embedding_weight_decay.

    Groups are named ("model", "embeddings", "bert"; see CTRModel.param_groups). The same names load as
    they are; a checkpoint with one "model" group resumes a run that splits off "embeddings" (or the
    reverse): each parameter keeps its moments, each group its saved hyperparameters except the weight
    decay now asked for. Any other difference is an error that says what differs."""
    saved = [g.get("name") for g in state["param_groups"]]
    current = [g.get("name") for g in optimizer.param_groups]
    sizes = [len(g["params"]) for g in state["param_groups"]]
    if saved == current and sizes == [len(g["params"]) for g in optimizer.param_groups]:
        optimizer.load_state_dict(state)
        return
    layout = None
    if saved != current and [n for n in saved if n != "embeddings"] == [n for n in current if n != "embeddings"]:
        t = optimizer.param_groups[0]
        layout = model.param_groups(t["lr"], t["lr"], t["weight_decay"], 0.0 if "embeddings" in saved else None)
    if layout is None or [g["name"] for g in layout] != saved or [len(g["params"]) for g in layout] != sizes:
        raise ValueError(
            f"the checkpoint's optimiser groups {dict(zip(saved, sizes, strict=True))} do not fit this model's "
            f"{ {g.get('name'): len(g['params']) for g in optimizer.param_groups} } (were model or train settings "
            "changed since it was saved?); resume with the settings it was trained with"
        )
    position = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    saved_ids = [pid for g in state["param_groups"] for pid in g["params"]]
    saved_params = [p for g in layout for p in g["params"]]
    remap = {pid: position[id(p)] for pid, p in zip(saved_ids, saved_params, strict=True)}
    by_name = {g["name"]: g for g in state["param_groups"]}
    fresh = optimizer.state_dict()["param_groups"]
    groups = []
    for group in fresh:
        source = by_name.get(group["name"], by_name["model"])  # a split-off "embeddings" had "model"'s
        groups.append(
            {**source, "name": group["name"], "weight_decay": group["weight_decay"], "params": group["params"]}
        )
    optimizer.load_state_dict(
        {"state": {remap[pid]: slots for pid, slots in state["state"].items()}, "param_groups": groups}
    )


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The multiple of the base learning rate at optimisation step `step` (0 = the first) of `total_steps`
    (train.lr_schedule): constant 1; cosine from 1 down to 0 at `total_steps`; warmup_cosine rises linearly
    to 1 over `warmup_steps` ((step + 1) / warmup_steps), then the cosine over the remaining steps. Steps
    past the end stay at the end."""
    if schedule == "constant":
        return 1.0
    if schedule == "warmup_cosine" and step < warmup_steps:
        return (step + 1) / warmup_steps
    warm = warmup_steps if schedule == "warmup_cosine" else 0
    progress = min(max(step - warm, 0) / max(total_steps - warm, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(train_samples: int, cfg: ExperimentConfig) -> int:
    """Optimisation steps of one epoch over `train_samples` (all workers'): each worker takes one step per
    grad_accum_steps micro-batches of its share (split) or of its slice of every global batch (replicate)."""
    t = cfg.train
    micro_batches = math.ceil(train_samples / (t.micro_batch_size * t.num_workers))
    return max(math.ceil(micro_batches / t.grad_accum_steps), 1)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ExperimentConfig, train_samples: int, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The per-step schedule of train.lr_schedule, starting at global step `step`: the schedule is recomputed
    from it, so a resumed run needs no scheduler state. Made after the optimiser state is loaded (whose groups
    keep the base rate as "initial_lr"). None for constant: the rate is left as it is (only a group restored
    from a scheduled run goes back to its base rate)."""
    t = cfg.train
    if t.lr_schedule == "constant":
        for group in optimizer.param_groups:
            if "initial_lr" in group:
                group["lr"] = group["initial_lr"]
        return None
    if train_samples <= 0:
        raise ValueError(f"train.lr_schedule={t.lr_schedule} needs the train split's size (loop_config train_samples)")
    total = t.epochs * steps_per_epoch(train_samples, cfg)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(t.lr_schedule, step + s, total, t.warmup_steps)
    )


# train.early_stop_metric -> which way is better (Ray's checkpoint_score_order).
METRIC_ORDER = {"val_auc": "max", "val_logloss": "min"}


def early_stop_score(metrics: dict[str, Any], metric: str) -> float:
    """train.early_stop_metric as a score where higher is better (val_logloss: its negative); NaN = -inf."""
    value = float(metrics[metric])
    if math.isnan(value):
        return -math.inf
    return value if METRIC_ORDER[metric] == "max" else -value


def early_stop_state(history: list[dict[str, Any]], metric: str) -> tuple[float, int, int]:
    """(best score, its epoch, epochs since it) over the epochs' metrics, by `early_stop_score`: what
    decides train.patience. An epoch improves only when strictly better; (-inf, -1, 0) without epochs."""
    best, best_epoch, bad_epochs = -math.inf, -1, 0
    for metrics in history:
        score = early_stop_score(metrics, metric)
        if score > best:
            best, best_epoch, bad_epochs = score, int(metrics["epoch"]), 0
        else:
            bad_epochs += 1
    return best, best_epoch, bad_epochs


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (CPU bf16 is slower for LSTMs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All workers' predictions, concatenated (exact metrics over the whole split)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


@torch.no_grad()
def predict_shard(model: nn.Module, shard: Any, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    model.eval()
    labels, probs, users = [], [], []
    for batch in shard.iter_torch_batches(batch_size=batch_size, device=device):
        with autocast(device):
            logits = model(to_model_inputs(batch))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        users.append(batch["user"].cpu().numpy())
    if not labels:
        return {"label": np.zeros(0, np.float32), "prob": np.zeros(0, np.float32), "user": np.zeros(0, np.int64)}
    return {"label": np.concatenate(labels), "prob": np.concatenate(probs), "user": np.concatenate(users)}


# In-epoch progress: rank 0 says how far the epoch is at every quarter of its expected steps, so a long
# epoch is not silent (one host read of the running loss per line, not per step).
PROGRESS_FRACTIONS = (0.25, 0.5, 0.75)


class Progress:
    """Rank 0's lines for the user, printed once.

    With the driver's queue (trainer.ProgressPrinter) a line is put there and the driver prints it, so it
    reaches the terminal although worker output is not streamed (runtime.init_ray) and is not doubled by
    Ray Train's print capture when it is. Without one (a Tune trial), rank 0 writes it to its real stdout,
    which Ray streams to the driver only in verbose mode.
    """

    def __init__(self, queue: Any | None, rank: int) -> None:
        self.queue, self.rank = queue, rank

    def say(self, line: str) -> None:
        if self.rank != 0:
            return
        if self.queue is not None:
            try:
                self.queue.put(line, timeout=10)
                return
            except Exception:  # noqa: BLE001 - a lost progress line must never stop training
                self.queue = None
        print(line, file=sys.__stdout__, flush=True)


def epoch_line(metrics: dict[str, Any], train_loss: float) -> str:
    """The one line per epoch: loss, val metrics, throughput."""
    return (
        f"[seqctr] epoch {metrics['epoch']}: loss {train_loss:.4f} val_auc {metrics['val_auc']:.4f} "
        f"gauc {metrics['val_gauc']:.4f} logloss {metrics['val_logloss']:.4f} "
        f"{metrics['samples_per_s']:.0f} samples/s"
    )


def epoch_seed(seed: int, rank: int, epoch: int, stream: int) -> int:
    """A well-mixed seed for one epoch of one worker; `stream` keeps dropout and augmentation apart."""
    return int(np.random.SeedSequence([seed, rank, epoch, stream]).generate_state(1)[0])


def micro_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    bucket_table: torch.Tensor,
    device: torch.device,
    generator: torch.Generator,
    loss_scale: float = 1.0,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Forward and backward of one micro-batch (augmentation, autocast); returns its mean loss, on device.

    `part=(rank, world)`: `batch` is the whole global micro-batch (train.sharding=replicate); it is
    augmented whole, with the generator every rank seeds alike, and this rank keeps its slice, so the
    step is the 1-worker step split across workers."""
    t = cfg.train
    inputs = to_model_inputs(batch)
    inputs["hist_idx"], inputs["hist_bucket"], inputs["hist_len"], inputs["hist_age"] = augment_history(
        inputs["hist_idx"],
        inputs["hist_bucket"],
        inputs["hist_len"],
        bucket_table,
        t.truncate_prob,
        t.drop_prob,
        t.replace_prob,
        generator,
        hist_age=inputs.get("hist_age"),
        age_drop_prob=t.age_drop_prob,
    )
    labels = batch["label"]
    if part is not None:
        inputs = _rank_slice(inputs, *part)
        lo, hi = _slice_bounds(labels.shape[0], *part)
        labels = labels[lo:hi]
    with autocast(device):
        logits = model(inputs)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    (loss * loss_scale).backward()
    return loss.detach()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: ExperimentConfig) -> None:
    if cfg.train.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    bucket_table: torch.Tensor,
    device: torch.device,
    generator: torch.Generator,
) -> torch.Tensor:
    """One optimisation step on one batch; returns the loss (on device: reading it would sync a GPU).

    Shared by the epoch loop and bench/train_throughput.py's bare baseline, so both time the same step."""
    optimizer.zero_grad(set_to_none=True)
    loss = micro_step(model, batch, cfg, bucket_table, device, generator)
    optimizer_step(model, optimizer, cfg)
    return loss


def _slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous share [lo, hi) of n rows read by every worker (train.sharding=replicate)."""
    lo, hi = rank * n // world, (rank + 1) * n // world
    if hi <= lo:  # a last batch smaller than the world: every rank still takes a step (DDP needs all of them)
        lo = min(rank, n - 1)
        hi = lo + 1
    return lo, hi


def _rank_slice(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    lo, hi = _slice_bounds(next(iter(batch.values())).shape[0], rank, world)
    return {k: v[lo:hi] for k, v in batch.items()}


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shard: Any,
    cfg: ExperimentConfig,
    bucket_table: torch.Tensor,
    device: torch.device,
    generator: torch.Generator,
    seed: int,
    expected_samples: int = 0,
    on_progress: Callable[[float, float, float], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """One pass over this worker's shard in micro-batches of batch_size / (workers x grad_accum_steps).

    Gradients of grad_accum_steps micro-batches are summed (DDP syncs only on the last), and the loss
    is accumulated on the device and read once, at the end: no host sync inside the loop, except one
    read per progress line when `on_progress(fraction, loss so far, samples/s)` is given together with
    this worker's `expected_samples` (at each of PROGRESS_FRACTIONS). `scheduler` (train.lr_schedule)
    steps after every optimisation step; "train_steps" counts them."""
    model.train()
    t = cfg.train
    micro = t.micro_batch_size
    total_loss = torch.zeros((), device=device)
    seen, start, pending, steps = 0, time.perf_counter(), 0, 0
    world = ray.train.get_context().get_world_size() if t.sharding == "replicate" else 1
    rank = ray.train.get_context().get_world_rank() if world > 1 else 0
    batches = shard.iter_torch_batches(
        # replicate: every worker reads the whole split in the same order, batches of all workers' micro
        # batches, and keeps its own slice, so each step sees the samples the 1-worker run sees.
        batch_size=micro * world,
        device=device,
        # Samples are stored oldest to newest: the shuffle buffer, not the micro-batch, decides how mixed
        # a batch is, so it holds as many samples at any worker count.
        local_shuffle_buffer_size=4 * t.batch_size,
        local_shuffle_seed=seed,
    )
    part = (rank, world) if world > 1 else None
    marks = [(f, int(f * expected_samples)) for f in PROGRESS_FRACTIONS] if on_progress and expected_samples else []
    optimizer.zero_grad(set_to_none=True)
    for batch in batches:
        n = batch["label"].shape[0]
        if part is not None:  # this rank's rows of the whole batch
            lo, hi = _slice_bounds(n, *part)
            n = hi - lo
        pending += 1
        last = pending == t.grad_accum_steps
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = micro_step(model, batch, cfg, bucket_table, device, generator, 1.0 / t.grad_accum_steps, part)
        if last:
            optimizer_step(model, optimizer, cfg)
            steps += _scheduled(scheduler)
            pending = 0
        total_loss += loss * n
        seen += n
        if on_progress and marks and seen >= marks[0][1]:
            while marks and seen >= marks[0][1]:
                fraction = marks.pop(0)[0]
            rate = seen / max(time.perf_counter() - start, 1e-9)
            on_progress(fraction, float(total_loss) / seen, rate)
    if pending:  # the epoch's last, partial accumulation still counts
        optimizer_step(model, optimizer, cfg)
        steps += _scheduled(scheduler)
    elapsed = time.perf_counter() - start
    return {
        "train_loss": float(total_loss) / max(seen, 1),
        "train_samples": seen,
        "train_seconds": elapsed,
        "train_steps": steps,
    }


def _scheduled(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> int:
    """One optimisation step taken: the schedule moves on; returns 1 (the step count)."""
    if scheduler is not None:
        scheduler.step()
    return 1


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    entered = time.time()  # start-up timeline (first epoch's metrics): where fit()'s fixed cost goes
    cfg = config_from_dict(loop_config["experiment"])
    assets: ModelAssets = loop_config["assets"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    world = ctx.get_world_size()
    progress = Progress(loop_config.get("progress"), rank)
    tables = SharedTables(loop_config["tables_dir"]) if loop_config.get("tables_dir") else None
    threads = cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)  # same init on every worker; DDP also broadcasts rank 0's weights
    generator = torch.Generator()  # augmentation; reseeded every epoch (epoch_seed)
    device = ray.train.torch.get_device()

    model = build_model_from_assets(cfg, assets)
    index = ItemIndex.from_bytes(assets.index_bytes)
    bucket_table = torch.as_tensor(index.buckets(cfg.model.id_buckets), dtype=torch.long, device=device)
    built = time.time()

    t = cfg.train
    start_epoch, best_auc, history, step = 0, -math.inf, [], 0
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # restart after a failure, or --resume
        with checkpoint.as_directory() as ckpt_dir:
            # A copy Ray downloaded (object storage) is outside the run folder: its tables are in tables_dir.
            contents = read_checkpoint(ckpt_dir, with_optimizer=True, tables_dir=loop_config.get("tables_dir"))
        model.load_state_dict(contents.full_state())
        optimizer_state = contents.optimizer_state
        state = contents.train_state
        start_epoch, best_auc, history = state["epoch"] + 1, state["best_auc"], state["history"]
        # Older checkpoints did not count steps: their epochs' steps are recomputed.
        train_samples = int(loop_config.get("train_samples") or 0)
        step = state.get("step", start_epoch * steps_per_epoch(train_samples, cfg))
        progress.say(f"[seqctr] resumed from {checkpoint.path} at epoch {start_epoch}")
    elif assets.init_from:
        model.load_state_dict(warm_start_state(assets.init_from, model, index), strict=False)
        progress.say(f"[seqctr] warm start from {assets.init_from}")

    # The only buffers are frozen item tables, identical on every worker (the same assets): DDP's default
    # broadcast of buffers would copy the whole (items x text) table on every forward (1.5 GB at 1M items).
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    core = getattr(model, "module", model)  # the CTRModel inside DDP
    core.check_ranges = False  # no host sync per step (see CTRModel)
    optimizer = make_optimizer(core, cfg)
    if optimizer_state is not None:
        load_optimizer_state(optimizer, optimizer_state, core)
    scheduler = make_scheduler(optimizer, cfg, int(loop_config.get("train_samples") or 0), step)
    # Best epoch and patience by train.early_stop_metric, recomputed from the epochs so far (a resumed run
    # may also change the metric).
    _, _, bad_epochs = early_stop_state(history, t.early_stop_metric)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    prepared = time.time()
    startup = {"loop_entered_unix": entered, "startup_model_s": built - entered, "startup_prepare_s": prepared - built}
    for epoch in range(start_epoch, cfg.train.epochs):
        if epoch >= start_epoch and bad_epochs >= cfg.train.patience:
            break
        # Dropout and augmentation draw from (seed, rank, epoch) alone, not from RNG state carried over from
        # earlier epochs, so a run restarted from a checkpoint replays the lost epoch exactly.
        torch.manual_seed(epoch_seed(cfg.train.seed, rank, epoch, stream=0))
        # replicate: every rank augments the same whole batch alike (micro_step), so it seeds as rank 0.
        aug_rank = 0 if cfg.train.sharding == "replicate" else rank
        generator.manual_seed(epoch_seed(cfg.train.seed, aug_rank, epoch, stream=1))

        def on_progress(fraction: float, loss: float, rate: float, epoch: int = epoch) -> None:
            progress.say(f"[seqctr] epoch {epoch}: {fraction:4.0%} loss {loss:.4f} {rate * world:.0f} samples/s")

        stats = train_epoch(
            model,
            optimizer,
            train_shard,
            cfg,
            bucket_table,
            device,
            generator,
            cfg.train.seed + epoch,
            expected_samples=int(loop_config.get("train_samples") or 0) // world,
            on_progress=on_progress if rank == 0 else None,
            scheduler=scheduler,
        )
        step += stats["train_steps"]
        preds = _gather(predict_shard(model, val_shard, 4 * cfg.train.micro_batch_size, device))
        val = evaluate(preds["label"], preds["prob"], preds["user"])
        samples_per_s = stats["train_samples"] / max(stats["train_seconds"], 1e-9)
        metrics = {
            "epoch": epoch,
            **{f"val_{k}": float(v) for k, v in val.items()},
            "train_loss": stats["train_loss"],
            "train_samples_per_worker": stats["train_samples"],
            "samples_per_s": samples_per_s * world,
            **(startup if epoch == start_epoch else {}),
            **({"lr": optimizer.param_groups[0]["lr"]} if scheduler is not None else {}),  # the next step's
        }
        best_auc = max(best_auc, early_stop_score(metrics, "val_auc"))
        history.append(metrics)
        _, best_epoch, bad_epochs = early_stop_state(history, t.early_stop_metric)
        metrics["should_stop"] = bad_epochs >= cfg.train.patience
        train_state = {
            "epoch": epoch,
            "best_auc": best_auc,
            "bad_epochs": bad_epochs,
            "history": history,
            "early_stop_metric": t.early_stop_metric,
            "best_epoch": best_epoch,
            "step": step,
        }
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                path = os.path.join(tmp, "checkpoint")
                save_checkpoint(
                    path,
                    model=model,
                    config=cfg,
                    item_index=assets.index_bytes,
                    shared_tables=tables,  # the frozen text table: written once per run, referenced
                    metrics=metrics,
                    optimizer=optimizer,
                    train_state=train_state,
                    extra_json=assets.extra_json,
                )
                ckpt = ray.train.Checkpoint.from_directory(path)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:03d}")
        progress.say(epoch_line(metrics, stats["train_loss"]))
