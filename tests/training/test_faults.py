"""Faults survived: a Ray Train worker process SIGKILLed mid-epoch, in a training run and in a Tune trial.

The kill hits the real worker process (found through Ray's state API) after the first epoch's
checkpoint is registered, so Ray Train must restart the worker group from that checkpoint
(`train.max_failures`) and finish. Dropout and augmentation are on, so the comparison with an
undisturbed run also checks that a resumed epoch draws the same random numbers (loop.epoch_seed).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from seqctr.platform.config import ExperimentConfig, load_config, resolve_paths
from seqctr.platform.data.synthetic import generate_synthetic
from seqctr.platform.runs import newest_run
from seqctr.training.trainer import run_training
from seqctr.tuning.campaign import run_campaign

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EPOCHS = 2
SETTINGS = {  # tiny.yaml, half its events (CI time), with dropout and augmentation on
    "data.synthetic.events": 10_000,
    "train.epochs": EPOCHS,
    "train.max_failures": 2,
    "model.dropout": 0.1,
    "train.drop_prob": 0.1,
    "train.truncate_prob": 0.2,
}
WORKER_CLASS = "RayTrainWorker"  # Ray Train V2's worker actor (ray/train/v2/.../worker_group/worker.py)
WAIT_S = 600.0  # a guard against hanging CI, not a performance bound: the machine may be loaded


def experiment(root: Path, **overrides: Any) -> ExperimentConfig:
    return resolve_paths(load_config(CONFIGS / "tiny.yaml").with_overrides({**SETTINGS, **overrides}), root)


@pytest.fixture(scope="module")
def data_root(ray_session, tmp_path_factory) -> Path:
    """One synthetic log for every run here, so samples and embeddings are built once."""
    root = tmp_path_factory.mktemp("faults")
    generate_synthetic(experiment(root).data.synthetic, root / "work" / "data")
    return root


@pytest.fixture(scope="module")
def undisturbed(data_root: Path) -> dict[str, Any]:
    return run_training(experiment(data_root, **{"train.run_name": "undisturbed"}))


def train_workers(alive_only: bool = False) -> dict[str, Any]:
    """actor_id -> state record of the Ray Train worker actors Ray knows (dead ones too, unless alive_only)."""
    import ray
    from ray.util.state import list_actors

    filters: list[tuple[str, str, str]] = [("class_name", "=", WORKER_CLASS)]
    if alive_only:
        filters.append(("state", "=", "ALIVE"))
    return {
        a.actor_id: a
        for a in list_actors(
            address=ray.get_runtime_context().gcs_address, filters=filters, limit=10_000, raise_on_missing_output=False
        )
    }


def wait_for(condition: Callable[[], Any], what: str, worker: threading.Thread) -> Any:
    """Poll until `condition()` is truthy; fail early if the training thread already ended."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not worker.is_alive():
            pytest.fail(f"training ended before {what}")
        time.sleep(0.2)
    pytest.fail(f"no {what} after {WAIT_S:.0f}s")


def registered_epoch0(run_dir: Path) -> bool:
    """Ray Train's controller has recorded epoch_000 as a checkpoint (so a restart resumes from it)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return (
        snapshot.exists() and "epoch_000" in snapshot.read_text() and (run_dir / "epoch_000" / "manifest.json").exists()
    )


def newest_run_dir(root: Path) -> Path | None:
    run = newest_run(str(root))
    return Path(run) if run else None


def run_and_kill(target: Callable[[], Any], run_dir_of: Callable[[], Path | None]) -> dict[str, Any]:
    """Run `target` in a thread, SIGKILL its train worker once epoch 0 is checkpointed, return what happened."""
    known = set(train_workers())
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = target()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread below
            outcome["error"] = err

    thread = threading.Thread(target=work, name="training", daemon=True)
    thread.start()
    run_dir = wait_for(run_dir_of, "run folder", thread)
    wait_for(lambda: registered_epoch0(run_dir), "epoch_000 checkpoint", thread)
    epoch0 = json.loads((run_dir / "epoch_000" / "metrics.json").read_text())
    [victim] = wait_for(
        lambda: [a for a in train_workers(alive_only=True).values() if a.actor_id not in known], "train worker", thread
    )
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(WAIT_S)
    assert not thread.is_alive(), "training did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]
    workers = {k: a for k, a in train_workers().items() if k not in known}
    assert workers[victim.actor_id].state == "DEAD"
    successors = [a for a in workers.values() if a.actor_id != victim.actor_id]
    assert successors, "no replacement worker was started"
    print(f"\n[faults] killed train worker pid {victim.pid}; replacement pid(s) {[a.pid for a in successors]}")
    return {"result": outcome["result"], "epoch0": epoch0, "victim": victim, "successors": successors}


def test_training_survives_a_killed_worker(data_root: Path, undisturbed: dict[str, Any]) -> None:
    cfg = experiment(data_root, **{"train.run_name": "killed"})
    root = Path(cfg.train.storage_path) / cfg.train.run_name
    out = run_and_kill(lambda: run_training(cfg), lambda: newest_run_dir(root))
    result = out["result"]

    assert [h["epoch"] for h in result["history"]] == list(range(EPOCHS))
    assert all(a.pid != out["victim"].pid for a in out["successors"])
    # Resumed, not retrained: epoch 0's record (timing fields included) is the one saved before the kill.
    assert result["history"][0] == out["epoch0"]
    calm, killed = undisturbed["val"]["val_auc"], result["val"]["val_auc"]
    print(f"[faults] final val AUC undisturbed {calm:.6f}, after the kill {killed:.6f}, diff {killed - calm:+.2e}")
    assert killed == pytest.approx(calm, abs=0.01)


def test_tuning_trial_survives_a_killed_worker(data_root: Path, undisturbed: dict[str, Any]) -> None:
    """One trial whose config equals the undisturbed run's (a one-value space), so their AUCs compare."""
    cfg = experiment(data_root, **{"tune.campaign": "killed-campaign", "tune.space": {"train.lr": {"choice": [0.02]}}})
    assert cfg.train.lr == 0.02
    trials_root = Path(cfg.train.storage_path) / cfg.tune.campaign / "trials"

    def trial_dir() -> Path | None:
        dirs = [d for d in trials_root.glob("*") if d.is_dir()] if trials_root.exists() else []
        return dirs[0] if dirs else None

    out = run_and_kill(lambda: run_campaign(cfg, num_samples=1, register=False), trial_dir)
    summary = out["result"]

    table = pd.read_csv(Path(summary["campaign_dir"]) / "trials.csv")
    assert len(table) == 1
    assert table.iloc[0]["status"] == "completed" and table.iloc[0]["epochs"] == EPOCHS
    best_calm = max(h["val_auc"] for h in undisturbed["history"])
    print(f"[faults] trial best val AUC {summary['best_val_auc']:.6f}, undisturbed {best_calm:.6f}")
    assert summary["best_val_auc"] == pytest.approx(best_calm, abs=0.01)
