"""TorchTrainer wiring: `seqctr train` end to end.

    seqctr train --config configs/default.yaml [--set train.epochs=3] [--resume] [--init-from DIR]

Builds (or reuses) the samples and the item embeddings, runs Ray Train in a new run folder
(train.storage_path/train.run_name/RUN_ID), then evaluates the best checkpoint (by train.early_stop_metric,
val AUC by default) on the test split, writes a report beside the run and moves the `latest` pointer to it
(platform/runs.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.data.samples import build_and_write, read_samples
from seqctr.platform.model.checkpoint import TABLES_DIR
from seqctr.platform.model.features import ItemIndex, index_path
from seqctr.platform.runs import new_run_id, newest_run, run_root, write_latest
from seqctr.platform.storage import absolute, basename, exists, join
from seqctr.training.assets import ModelAssets, prepare_assets
from seqctr.training.ingest import encode_dataset, side_of
from seqctr.training.loop import METRIC_ORDER, early_stop_score, train_loop_per_worker


def ensure_samples(cfg: ExperimentConfig) -> dict[str, Any]:
    """Build the sample splits unless the same inputs were already built (build_and_write caches)."""
    items = cfg.data.items if exists(cfg.data.items) else None
    return build_and_write(
        cfg.data.events,
        cfg.data.samples,
        max_seq_len=cfg.data.max_seq_len,
        train_fraction=cfg.data.train_fraction,
        val_fraction=cfg.data.val_fraction,
        items_path=items,
        features=cfg.data.features,
    )


def run_index(cfg: ExperimentConfig, init_from: str | None) -> ItemIndex:
    """The run's item index; a warm start extends its parent's index so known items keep their rows."""
    index = ItemIndex.load(index_path(cfg.data.samples))
    if not init_from:
        return index
    from seqctr.platform.model.checkpoint import read_checkpoint

    parent = read_checkpoint(init_from).index
    return parent.extend(index.ids)


def make_datasets(cfg: ExperimentConfig, index_data: bytes) -> dict[str, ray.data.Dataset]:
    """Encoded train/val splits, materialised once in the object store (spilled to disk if large).

    Encoding strings to indices once, instead of on every epoch, keeps the epoch loop at the model's
    speed; a campaign's trials share the same materialised blocks. `train.max_train_samples` keeps the
    first N train samples (val is always whole, so runs stay comparable).
    """
    with _block_order_kept(cfg.train.sharding == "replicate" or cfg.train.shuffle == "time"):
        return _encoded_splits(cfg, index_data)


@contextlib.contextmanager
def _block_order_kept(ordered: bool) -> Iterator[None]:
    """train.shuffle=time or train.sharding=replicate: datasets built here keep their blocks in input
    order (by default Ray Data stores whichever block finished first, so the epoch's order would change
    run to run). Set on the current DataContext while they are built and materialised."""
    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = before or ordered
    try:
        yield
    finally:
        options.preserve_order = before


def _encoded_splits(cfg: ExperimentConfig, index_data: bytes) -> dict[str, ray.data.Dataset]:
    datasets = {}
    for split in ("train", "val"):
        samples = read_samples(cfg.data.samples, split)
        if split == "train" and cfg.train.max_train_samples:
            samples = samples.limit(cfg.train.max_train_samples)
        encoded = encode_dataset(samples, index_data, cfg.model.id_buckets, cfg.data.max_seq_len, side=side_of(cfg))
        if split == "train" and cfg.train.shuffle == "global":
            # Stored samples run oldest to newest, so each worker's shard is one slice of time and the
            # model depends on the worker count (1 worker ends an epoch on the newest samples). Shuffled
            # once, every worker count sees the same mixture (see train.shuffle).
            encoded = encoded.random_shuffle(seed=cfg.train.seed)
        datasets[split] = encoded.materialize()
    return datasets


class ProgressPrinter:
    """The driver's end of rank 0's progress lines (loop.Progress): each is printed here, once.

    Worker output is not streamed to the driver by default (runtime.init_ray), and when it is, Ray Train
    echoes a worker's print twice; a Ray queue (a zero-CPU actor) read by a thread here avoids both.
    """

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seqctr-progress", daemon=True)

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        try:  # workers put synchronously, so every line is in the queue once fit() returns
            while not self.queue.empty():
                print(self.queue.get_nowait(), flush=True)
        finally:
            self.queue.shutdown()

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self.queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue is gone (Ray shut down): nothing more to print
                return
            print(line, flush=True)


def make_trainer(
    cfg: ExperimentConfig,
    assets: ModelAssets,
    datasets: dict[str, ray.data.Dataset],
    callbacks: list[Any] | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    progress: Any | None = None,
    tables_dir: str | None = None,
) -> TorchTrainer:
    """One TorchTrainer from the config (also used by every Tune trial).

    `progress` is a ProgressPrinter's queue: rank 0 puts its epoch and in-epoch lines there.
    `tables_dir` is where the run keeps its item tables once (checkpoint.SharedTables; default
    STORAGE/NAME/tables, beside the run's checkpoints)."""
    t = cfg.train
    storage = absolute(storage_path or t.storage_path)
    tables = tables_dir or join(storage, name or t.run_name, TABLES_DIR)
    loop_config: dict[str, Any] = {"experiment": cfg.to_dict(), "assets": assets, "tables_dir": tables}
    if progress is not None:
        loop_config["progress"] = progress
    if progress is not None or t.lr_schedule != "constant":  # in-epoch progress; the schedule's length
        loop_config["train_samples"] = datasets["train"].count()  # materialised: read from block metadata
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name or t.run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_best,
                checkpoint_score_attribute=t.early_stop_metric,
                checkpoint_score_order=METRIC_ORDER[t.early_stop_metric],
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=_data_config(cfg),
    )


def _data_config(cfg: ExperimentConfig) -> DataConfig | None:
    """train's blocks arrive in their stored order whenever that order means something: train.shuffle=time
    (samples are stored oldest to newest and an epoch ends on the freshest) or replicate sharding (every
    worker keeps its slice of the same batches). Ray Data's default lets whichever block is ready first
    come first, so from the second epoch on the order, and with it the model, changed with machine load
    (a resumed run, whose epoch is its iterator's first pass, then disagreed with an undisturbed one).
    replicate: train is not split either (each worker reads it whole)."""
    if cfg.train.sharding != "replicate" and cfg.train.shuffle != "time":
        return None
    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True
    split = ["val"] if cfg.train.sharding == "replicate" else "all"
    return DataConfig(datasets_to_split=split, execution_options={"train": ordered})


def best_checkpoint_path(result: Any, run_dir: str, metric: str = "val_auc") -> str:
    """The best checkpoint by `metric` (train.early_stop_metric), as a path or URI under `run_dir` (Ray's own
    `Checkpoint.path` is a path inside its filesystem: no s3:// scheme)."""
    # early_stop_score: higher is better, and a NaN metric (a one-class val split) ranks last, not anywhere.
    checkpoints = result.best_checkpoints or []
    scored = [(early_stop_score(m, metric) if metric in m else float("-inf"), c.path) for c, m in checkpoints]
    if not scored:
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
        return join(run_dir, basename(result.checkpoint.path))
    return join(run_dir, basename(max(scored, key=lambda s: s[0])[1]))


def run_training(cfg: ExperimentConfig, resume: bool = False, init_from: str | None = None) -> dict[str, Any]:
    """Train, pick the best checkpoint by train.early_stop_metric, evaluate it on test, write the report."""
    from seqctr.training.evaluation import evaluate_checkpoint_on_split
    from seqctr.training.report import write_report

    started = time.perf_counter()
    root = run_root(cfg.train.storage_path, cfg.train.run_name)
    if resume:
        run_dir = newest_run(root)
        if run_dir is None:
            raise FileNotFoundError(f"--resume: no run to resume under {root} (train.run_name)")
    else:
        run_dir = join(root, new_run_id())  # its own folder: an earlier run is never moved or overwritten
    parent_dir = None
    if init_from:
        from seqctr.platform.registry import resolve_checkpoint_uri

        parent_dir = resolve_checkpoint_uri(init_from, cfg)
    print("[seqctr] stage 1/4: samples")
    ensure_samples(cfg)
    print("[seqctr] stage 2/4: item embeddings and feature maps")
    index = run_index(cfg, parent_dir)
    assets = prepare_assets(cfg, index, init_from=parent_dir)
    if parent_dir:
        assets.extra_json["lineage.json"] = {"parent": init_from, "parent_dir": parent_dir}
    print(f"[seqctr] stage 3/4: Ray Train ({cfg.train.num_workers} worker(s), use_gpu={cfg.train.use_gpu})")
    datasets = make_datasets(cfg, assets.index_bytes)
    with ProgressPrinter() as printer:
        trainer = make_trainer(cfg, assets, datasets, storage_path=root, name=basename(run_dir), progress=printer.queue)
        result = trainer.fit()
    if result.error:
        raise result.error
    metric = cfg.train.early_stop_metric
    best = best_checkpoint_path(result, run_dir, metric)
    print(f"[seqctr] stage 4/4: test evaluation of {best} (best by {metric})")
    test = evaluate_checkpoint_on_split(best, cfg.data.samples, "test")
    history = _history(join(run_dir, basename(result.checkpoint.path)) if result.checkpoint else best)
    report = write_report(join(run_dir, "report"), best, test, history)
    pointer = write_latest(
        root, {"run_id": basename(run_dir), "run_dir": run_dir, "best_checkpoint": best, "test": test["metrics"]}
    )
    return {
        "run_dir": run_dir,
        "latest": pointer,
        "best_checkpoint": best,
        "best_by": metric,
        "test": test["metrics"],
        "val": {k: v for k, v in history[-1].items() if k.startswith("val_")} if history else {},
        "epochs_run": len(history),
        "history": history,
        "report": report,
        "seconds": time.perf_counter() - started,
    }


def _history(checkpoint: str) -> list[dict[str, Any]]:
    from seqctr.platform.model.checkpoint import read_checkpoint
    from seqctr.platform.registry import resolve_checkpoint_uri

    return read_checkpoint(resolve_checkpoint_uri(checkpoint)).train_state.get("history", [])
