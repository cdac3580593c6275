"""Tuning campaigns: Ray Tune trials that each run a real TorchTrainer (the Ray Train V2 pattern).

    seqctr tune --config configs/default.yaml --samples 8 --max-concurrent 1
    seqctr tune --config configs/default.yaml --resume campaign

A trial function builds the trial's config (base + dotted overrides), then a TorchTrainer whose
`TuneReportCallback` forwards each epoch's metrics to Tune, so ASHA can stop weak trials early on
val AUC. Samples, item embeddings and encoded datasets are prepared once and shared by every trial.
At the end the best trial's best checkpoint is evaluated on test and registered; `production` moves
only when it beats the current production.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from seqctr.platform.config import ConfigError, ExperimentConfig, config_from_dict
from seqctr.platform.runtime import verbose
from seqctr.platform.storage import (
    absolute,
    atomic_write_bytes,
    atomic_write_text,
    exists,
    is_file,
    join,
    list_names,
    read_text,
)
from seqctr.tuning.space import base_point, build_search_space, shared_data_config, trial_config

METRIC, MODE = "val_auc", "max"


class CampaignInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) or SIGUSR1 stopped the campaign; Tune saved its state, so it can resume."""


def train_trial(params: dict[str, Any], base: dict[str, Any], assets: Any, datasets: Any, trials_root: str) -> None:
    """One Tune trial = one Ray Train run, in its own folder under the campaign."""
    from seqctr.training.trainer import make_trainer

    cfg = trial_config(config_from_dict(base), params)
    trial_id = tune.get_context().get_trial_id()
    finished = finished_run_metrics(join(trials_root, trial_id), cfg.train.epochs)
    if finished is not None:
        tune.report(finished)
        return
    trainer = make_trainer(
        cfg,
        assets,
        datasets,
        callbacks=[TuneReportCallback()],
        storage_path=trials_root,
        name=trial_id,
        tables_dir=join(trials_root, "tables"),  # one copy of the item tables for every trial
    )
    trainer.fit()


def finished_run_metrics(run_dir: str, epochs: int) -> dict[str, Any] | None:
    """The last epoch's metrics of a trial's Train run that already ran to its end, else None.

    Why: a campaign interrupted after a trial's training ended but before Tune saw the trial end
    resumes that trial; its Train run restores as finished and reports nothing, which Tune refuses.
    Such a trial reports its last epoch again instead of training (the latest checkpoint is always kept).
    """
    last: dict[str, Any] | None = None
    for metrics in _checkpoint_metrics(run_dir, prefix="epoch_").values():
        if last is None or metrics.get("epoch", -1) > last.get("epoch", -1):
            last = metrics
    if last is not None and (last.get("epoch", -1) + 1 >= epochs or last.get("should_stop")):
        return last
    return None


def _searcher(cfg: ExperimentConfig, max_concurrent: int) -> Any:
    """Optuna or random search, each holding at most `max_concurrent` trials at once (Tune ignores
    `TuneConfig.max_concurrent_trials` for a random-search generator, so the limit is set here)."""
    point = base_point(cfg) if cfg.tune.start_from_base else {}
    outside = sorted(set(cfg.tune.space) - set(point)) if cfg.tune.start_from_base else []
    if outside and cfg.tune.search == "optuna":  # Optuna takes only a whole point of its space
        print(f"[seqctr] tune: the base config is not a trial: its {', '.join(outside)} lie outside the space")
        point = {}
    start = [point] if point else None
    if cfg.tune.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna = OptunaSearch(metric=METRIC, mode=MODE, seed=cfg.train.seed, points_to_evaluate=start)
        return ConcurrencyLimiter(optuna, max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=max_concurrent, points_to_evaluate=start)


def _scheduler(cfg: ExperimentConfig) -> Any:
    """ASHA on val AUC, or none (every trial runs all its epochs; for measuring what ASHA saves)."""
    if not cfg.tune.early_stopping:
        return None
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=cfg.train.epochs,
        grace_period=cfg.tune.grace_epochs,
        reduction_factor=cfg.tune.reduction_factor,
    )


def _check_capacity(cfg: ExperimentConfig, max_concurrent: int) -> int:
    """Never run more trials at once than the cluster can hold workers for (no waiting on each other)."""
    need = cfg.train.num_workers * cfg.train.cpus_per_worker
    have = ray.cluster_resources().get("CPU", 1)
    fit = max(1, int(have // (need + 0.5)))  # half a CPU per trial for its Ray Data ingest
    if max_concurrent > fit:
        print(f"[seqctr] tune: max_concurrent {max_concurrent} -> {fit} ({have:g} CPUs, {need:g} per trial)")
    return min(max_concurrent, fit)


def _trial_table(results: Any, max_epochs: int) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        auc = history[METRIC] if history is not None and METRIC in history else pd.Series(dtype=float)
        # Distinct epochs: a trial resumed after an interruption may have reported its last epoch twice.
        epochs = int(history["epoch"].nunique()) if history is not None and "epoch" in history else int(len(auc))
        status = "error" if result.error else ("completed" if epochs >= max_epochs else "stopped early")
        if not result.error and epochs and history.iloc[-1].get("should_stop", False):
            status = "early-stopped (patience)"
        rows.append(
            {
                "trial_id": (result.metrics or {}).get("trial_id", Path(result.path).name),
                **{f"config/{k}": v for k, v in (result.config or {}).items()},
                "val_auc": float(auc.max()) if epochs else float("nan"),
                "epochs": epochs,
                "status": status,
            }
        )
    return pd.DataFrame(rows).sort_values("val_auc", ascending=False, na_position="last")


def _checkpoint_metrics(run_dir: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """checkpoint folder (local path or URI) -> its metrics.json, for every checkpoint of a Train run."""
    found = {}
    for name in list_names(run_dir):
        metrics_file = join(run_dir, name, "metrics.json")
        if name.startswith(prefix) and is_file(metrics_file):
            found[join(run_dir, name)] = json.loads(read_text(metrics_file))
    return found


def best_trial_checkpoint(trials_root: str, trial_id: str) -> str:
    """The trial's checkpoint with the highest val AUC (read from each checkpoint's metrics.json)."""
    found = _checkpoint_metrics(join(trials_root, trial_id))
    if not found:
        raise RuntimeError(f"trial {trial_id} left no checkpoint under {join(trials_root, trial_id)}")
    return max(found, key=lambda path: found[path].get(METRIC, float("-inf")))


def run_campaign(
    cfg: ExperimentConfig,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    resume: str | None = None,
    register: bool = True,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a campaign, print and save the trial table, register and maybe promote the best.

    An interrupted campaign (Ctrl-C) raises CampaignInterrupted after Tune saved its state; finished
    trials are kept and `resume=NAME` runs only the rest. `callbacks` are Tune callbacks.
    """
    from seqctr.training.assets import prepare_assets
    from seqctr.training.evaluation import evaluate_checkpoint_on_split
    from seqctr.training.trainer import ensure_samples, make_datasets, run_index

    started = time.perf_counter()
    name = resume or cfg.tune.campaign
    storage = absolute(cfg.train.storage_path)
    campaign_dir = join(storage, name)
    trials_root = join(campaign_dir, "trials")
    space = build_search_space(cfg)
    num_samples = num_samples or cfg.tune.num_samples
    concurrent = _check_capacity(cfg, max_concurrent or cfg.tune.max_concurrent)

    print(f"[seqctr] tune: preparing shared data for campaign {name}")
    ensure_samples(cfg)
    index = run_index(cfg, None)
    shared = shared_data_config(cfg)
    assets = prepare_assets(shared, index)
    datasets = make_datasets(shared, assets.index_bytes)
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, base=cfg.to_dict(), assets=assets, datasets=datasets, trials_root=trials_root
        ),
        {"CPU": 0.01},  # the trial driver only waits; its TorchTrainer reserves the workers' CPUs
    )
    if resume:
        if not tune.Tuner.can_restore(campaign_dir):
            raise ConfigError(f"--resume {name}: no campaign to resume at {campaign_dir}")
        tuner = tune.Tuner.restore(campaign_dir, trainable=trainable, resume_errored=True)
    else:
        if exists(campaign_dir):
            raise ConfigError(
                f"campaign folder {campaign_dir} exists: pass --resume {name} or set tune.campaign to a new name"
            )
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                num_samples=num_samples,
                search_alg=_searcher(cfg, concurrent),
                scheduler=_scheduler(cfg),
            ),
            # Tune's status table every 30 s only with --verbose: seqctr prints the trial table at the end.
            run_config=tune.RunConfig(
                name=name, storage_path=storage, callbacks=callbacks, verbose=2 if verbose() else 0
            ),
        )
    if not verbose():
        # Tune's newer console output prints its experiment banner even at verbose=0; its classic
        # reporter is silent at 0 (read by this driver only).
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    results = tuner.fit()
    finished = results.num_terminated + results.num_errors
    if finished < len(results) or len(results) < num_samples and not resume:
        raise CampaignInterrupted(
            f"campaign {name} interrupted with {finished} of {max(len(results), num_samples)} trials finished; "
            f"state saved in {campaign_dir}: resume with `seqctr tune --resume {name}`"
        )
    table = _trial_table(results, cfg.train.epochs)
    atomic_write_text(join(campaign_dir, "trials.csv"), table.to_csv(index=False))
    atomic_write_bytes(join(campaign_dir, "trials.parquet"), table.to_parquet(index=False))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False))
    ok = table[table["status"] != "error"].dropna(subset=["val_auc"])
    if ok.empty:
        raise RuntimeError(f"campaign {name}: every trial failed; see {campaign_dir}")
    best_row = ok.iloc[0]
    best_ckpt = best_trial_checkpoint(trials_root, best_row["trial_id"])
    test = evaluate_checkpoint_on_split(best_ckpt, cfg.data.samples, "test")["metrics"]
    epochs_run = int(table["epochs"].sum())
    summary: dict[str, Any] = {
        "campaign": name,
        "campaign_dir": campaign_dir,
        "trials": len(table),
        "best_trial": best_row["trial_id"],
        "best_config": {k[7:]: best_row[k] for k in table.columns if k.startswith("config/")},
        "best_val_auc": float(best_row["val_auc"]),
        "best_checkpoint": best_ckpt,
        "test": test,
        "trial_epochs_run": epochs_run,
        "trial_epochs_full": len(table) * cfg.train.epochs,
        "asha_saving": 1 - epochs_run / max(1, len(table) * cfg.train.epochs),
        "tensorboard": campaign_dir,
        "seconds": time.perf_counter() - started,
    }
    if register:
        summary["registry"] = register_best(cfg, best_ckpt, name, summary["best_config"])
    return summary


def register_best(cfg: ExperimentConfig, checkpoint: str, run_id: str, trial_params: dict[str, Any]) -> dict[str, Any]:
    """Register the winner with its lineage; move `production` only if it beats the current one."""
    from seqctr.platform.registry import Registry, data_fingerprint

    registry = Registry(cfg.registry.root)
    record = registry.register(
        cfg.registry.name,
        checkpoint,
        run_id=run_id,
        trial_config={k: _plain(v) for k, v in trial_params.items()},
        data_fingerprint=data_fingerprint(cfg.data.events),
    )
    promotion = registry.promote(cfg.registry.name, record.version, metric=cfg.registry.promote_metric)
    return {"version": record.version, "promotion": _plain(promotion)}


def _plain(value: Any) -> Any:
    """JSON-friendly copies of numpy scalars and small records."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value
