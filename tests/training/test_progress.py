"""Training progress reaches the user once: rank 0's lines, through the driver's queue, in order."""

from __future__ import annotations

import math

import pytest
import torch

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.ctr import build_model
from seqctr.training.loop import Progress, epoch_line, train_epoch

NUM_ITEMS, BUCKETS, B, L, BATCHES = 40, 97, 16, 5, 8


class FakeShard:
    """What train_epoch reads from a Ray Train dataset shard: iter_torch_batches."""

    def iter_torch_batches(self, **_: object):
        g = torch.Generator().manual_seed(0)
        for _ in range(BATCHES):
            lengths = torch.randint(1, L + 1, (B,), generator=g)
            idx = torch.randint(2, NUM_ITEMS, (B, L), generator=g) * (torch.arange(L) < lengths[:, None])
            target = torch.randint(2, NUM_ITEMS, (B,), generator=g)
            yield {
                "hist_idx": idx,
                "hist_bucket": idx % BUCKETS,
                "hist_len": lengths,
                "target_idx": target,
                "target_bucket": target % BUCKETS,
                "label": (torch.rand(B, generator=g) < 0.3).float(),
            }


def run_epoch(on_progress=None, expected: int = 0) -> dict[str, float]:
    cfg = ExperimentConfig().with_overrides(
        {"model.id_buckets": BUCKETS, "model.embed_dim": 8, "model.hidden_size": 8, "model.mlp_hidden": [8],
         "model.text": False, "train.batch_size": B}
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_ITEMS, None)
    model.check_ranges = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    table = torch.arange(NUM_ITEMS) % BUCKETS
    generator = torch.Generator().manual_seed(1)
    return train_epoch(
        model, optimizer, FakeShard(), cfg, table, torch.device("cpu"), generator, 0,
        expected_samples=expected, on_progress=on_progress,
    )  # fmt: skip


def test_an_epoch_reports_each_quarter_once_and_trains_the_same():
    calls: list[tuple[float, float, float]] = []
    stats = run_epoch(lambda *args: calls.append(args), expected=B * BATCHES)
    assert [c[0] for c in calls] == [0.25, 0.5, 0.75]
    assert all(math.isfinite(loss) and rate > 0 for _, loss, rate in calls)
    quiet = run_epoch()  # no progress: the same epoch, the same loss
    assert stats["train_loss"] == pytest.approx(quiet["train_loss"])
    assert stats["train_samples"] == quiet["train_samples"] == B * BATCHES


def test_no_expected_count_means_no_progress_lines():
    calls: list[tuple[float, float, float]] = []
    run_epoch(lambda *args: calls.append(args), expected=0)
    assert calls == []


class ListQueue:
    def __init__(self, fail: bool = False) -> None:
        self.items: list[str] = []
        self.fail = fail

    def put(self, item: str, timeout: float | None = None) -> None:
        if self.fail:
            raise ConnectionError("queue actor gone")
        self.items.append(item)


def test_only_rank_zero_speaks_and_a_lost_queue_falls_back_to_stdout(capfd):
    queue = ListQueue()
    Progress(queue, rank=1).say("from rank 1")
    Progress(queue, rank=0).say("from rank 0")
    assert queue.items == ["from rank 0"]
    assert capfd.readouterr().out == ""
    Progress(ListQueue(fail=True), rank=0).say("still shown")
    assert capfd.readouterr().out == "still shown\n"


def test_epoch_line_names_loss_and_val_metrics():
    metrics = {"epoch": 2, "val_auc": 0.71234, "val_gauc": 0.65, "val_logloss": 0.5, "samples_per_s": 1234.4}
    assert epoch_line(metrics, 0.55561) == (
        "[seqctr] epoch 2: loss 0.5556 val_auc 0.7123 gauc 0.6500 logloss 0.5000 1234 samples/s"
    )


def test_the_driver_prints_every_worker_line_once_in_order(ray_session, capsys):
    from seqctr.training.trainer import ProgressPrinter

    @ray_session.remote(num_cpus=0)
    def worker(queue, n: int) -> None:
        for i in range(n):
            Progress(queue, rank=0).say(f"line {i}")

    with ProgressPrinter() as printer:
        ray_session.get(worker.remote(printer.queue, 5))
    assert capsys.readouterr().out.splitlines() == [f"line {i}" for i in range(5)]
