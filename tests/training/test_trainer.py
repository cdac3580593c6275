"""End to end on the tiny config: synthetic log -> samples -> embeddings -> Ray Train -> report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from seqctr.platform.config import ExperimentConfig, load_config, resolve_paths
from seqctr.platform.data.synthetic import generate_synthetic
from seqctr.platform.model.checkpoint import read_checkpoint
from seqctr.platform.registry import resolve_checkpoint_uri
from seqctr.platform.runs import read_latest
from seqctr.training.evaluation import evaluate_log, metrics_for, score_dataset
from seqctr.training.trainer import run_training

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


def tiny_experiment(root: Path, **overrides) -> ExperimentConfig:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    return resolve_paths(cfg.with_overrides(overrides), root)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = tiny_experiment(root, **{"train.epochs": 3, "train.run_name": "tiny", "model.attention": True})
    generate_synthetic(cfg.data.synthetic, root / "work" / "data")
    return cfg, run_training(cfg)


def test_training_learns_above_chance_and_reports(trained):
    cfg, result = trained
    assert result["epochs_run"] >= 2
    assert result["val"]["val_auc"] > 0.65, result["val"]
    test = result["test"]
    assert test["auc"] > 0.65 and test["oracle_auc"] > test["auc"] - 0.05
    assert 0 < test["lift_ratio"] <= 1.2
    for name in ("metrics.json", "roc.png", "calibration.png", "curves.png"):
        assert Path(result["report"][name]).stat().st_size > 0
    saved = json.loads(Path(result["report"]["metrics.json"]).read_text())
    assert saved["test"]["auc"] == pytest.approx(test["auc"])
    assert [h["epoch"] for h in saved["history"]] == list(range(result["epochs_run"]))


def test_best_checkpoint_reproduces_its_val_auc(trained):
    """Reloaded from disk, the best checkpoint scores val exactly as the training worker did."""
    cfg, result = trained
    best = result["best_checkpoint"]
    contents = read_checkpoint(best)
    assert contents.metrics["val_auc"] == max(h["val_auc"] for h in result["history"])
    assert contents.config.model.attention is True
    from seqctr.platform.data.samples import read_samples

    again = metrics_for(score_dataset(best, read_samples(cfg.data.samples, "val")))
    assert again["auc"] == pytest.approx(contents.metrics["val_auc"], abs=1e-6)
    assert again["logloss"] == pytest.approx(contents.metrics["val_logloss"], abs=1e-5)


def test_only_the_best_k_checkpoints_are_kept(trained):
    cfg, result = trained
    kept = sorted(Path(result["run_dir"]).glob("epoch_*"))
    assert 1 <= len(kept) <= cfg.train.keep_best


def test_evaluate_scores_a_raw_log_with_oracle(trained):
    cfg, result = trained
    out = evaluate_log(result["best_checkpoint"], cfg.data.events)
    assert out["count"] == cfg.data.synthetic.events
    assert out["auc"] > 0.6 and out["oracle_auc"] > 0.75


def test_resume_continues_from_the_saved_epoch_and_a_new_run_keeps_the_old(ray_session, tmp_path):
    cfg = tiny_experiment(tmp_path, **{"train.epochs": 1, "train.run_name": "resume"})
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    first = run_training(cfg)
    assert first["epochs_run"] == 1
    longer = cfg.with_overrides({"train.epochs": 2})
    second = run_training(longer, resume=True)
    assert second["epochs_run"] == 2 and second["run_dir"] == first["run_dir"]
    # epoch 0 was restored, not retrained: its metrics are identical
    assert second["history"][0] == first["history"][0]
    assert second["history"][1]["epoch"] == 1
    # A fresh run gets its own folder: the earlier one stays whole, `latest` moves to the new one.
    before = tree_digest(Path(first["run_dir"]))
    third = run_training(cfg)
    assert third["run_dir"] != first["run_dir"] and tree_digest(Path(first["run_dir"])) == before
    root = Path(cfg.train.storage_path) / "resume"
    assert read_latest(root)["best_checkpoint"] == third["best_checkpoint"]
    assert resolve_checkpoint_uri(str(root / "latest")) == third["best_checkpoint"]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path -> sha256: equal means byte-for-byte unchanged."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--set", "data.events=work/data/no_such_events", "--config", TINY],
        ["train", "--init-from", "registry://seqctr@no_such_alias", "--config", TINY],
        ["train", "--set", "model.hidden_size=-1", "--config", TINY],
        ["evaluate", "--checkpoint", "work/runs/tiny/no_such_run"],
        ["data", "build", "--events", "work/data/no_such_events", "--config", TINY],
        ["embed", "--items", "work/data/no_such_items", "--config", TINY],
        ["tune", "--set", "data.events=work/data/no_such_events", "--config", TINY],
        ["models", "promote", "seqctr", "v0099", "--config", TINY],
        ["models", "rollback", "no_such_model", "--config", TINY],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_a_refused_command_changes_nothing(trained, monkeypatch, args):
    """Bad input stops before anything is written: run folders, pointer, registry and caches stay as they were."""
    from typer.testing import CliRunner

    from seqctr.cli.main import app
    from seqctr.platform.registry import Registry

    cfg, result = trained
    work = Path(cfg.train.storage_path).parent
    registry = Registry(cfg.registry.root)
    if not (work / "registry").exists():
        registry.register(cfg.registry.name, result["best_checkpoint"], run_id="tiny")
    monkeypatch.chdir(work.parent)
    before = tree_digest(work)
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 2, outcome.output
    assert any(line.startswith("error: ") for line in outcome.output.splitlines()), outcome.output
    assert tree_digest(work) == before


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    cfg = tiny_experiment(tmp_path, **{"train.run_name": "missing"})
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        run_training(cfg, resume=True)


def test_warm_start_from_the_registry_extends_the_index_and_records_its_parent(trained, tmp_path):
    """Retraining on a newer log with more items: known items keep their rows, weights start from the
    parent (with a vanishing learning rate they are still the parent's after an epoch), lineage is kept."""
    from seqctr.platform.config import SyntheticConfig
    from seqctr.platform.registry import Registry

    parent_cfg, parent = trained
    registry_root = tmp_path / "registry"
    registry = Registry(str(registry_root))
    name = parent_cfg.registry.name
    first = registry.register(name, parent["best_checkpoint"], run_id="tiny")
    registry.promote(name, first.version, force=True)

    cfg = tiny_experiment(
        tmp_path,
        **{
            "train.epochs": 1,
            "train.run_name": "warm",
            "train.lr": 1e-9,
            "model.attention": True,
            "registry.root": str(registry_root),
        },
    )
    grown = SyntheticConfig(**{**cfg.data.synthetic.model_dump(), "items": 180, "seed": 1})
    generate_synthetic(grown, tmp_path / "work" / "data")
    child = run_training(cfg, init_from=f"registry://{name}@production")

    old = read_checkpoint(parent["best_checkpoint"])
    new = read_checkpoint(child["best_checkpoint"])
    old_ids, new_ids = old.index.ids, new.index.ids
    assert new_ids[: len(old_ids)] == old_ids
    assert set(new_ids[len(old_ids) :]) and "i000179" in new_ids
    carried = [k for k, t in old.model_state.items() if k in new.model_state and t.shape == new.model_state[k].shape]
    assert {"encoder.rnn.weight_ih_l0", "items.id_embedding.weight", "head.0.weight"} <= set(carried)
    for key in carried:
        if key.rsplit(".", 1)[-1] in ("text_table", "item_input_ids", "item_attention_mask"):
            continue  # rebuilt from the new item table
        assert torch.allclose(new.model_state[key].float(), old.model_state[key].float(), atol=1e-5), key

    assert json.loads((Path(child["best_checkpoint"]) / "lineage.json").read_text())["parent"] == (
        f"registry://{name}@production"
    )
    second = registry.register(name, child["best_checkpoint"], run_id="warm")
    assert second.parent == f"{name}@{first.version}"


def test_max_train_samples_subsamples_train_and_keeps_val_whole(trained):
    from seqctr.platform.data.samples import read_samples
    from seqctr.training.trainer import make_datasets, run_index

    cfg, _ = trained
    index_data = run_index(cfg, None).to_parquet_bytes()
    datasets = make_datasets(cfg.with_overrides({"train.max_train_samples": 100}), index_data)
    assert datasets["train"].count() == 100
    assert datasets["val"].count() == read_samples(cfg.data.samples, "val").count()


def test_replicated_sharding_makes_two_workers_reach_the_model_of_one(ray_session, tmp_path):
    """train.batch_size is global, and with train.sharding=replicate both workers read the split in the
    1-worker order and train on their halves of each global batch: the same steps on the same samples,
    so the same val AUC (up to dropout/augmentation draws), with the default time-ordered epoch."""
    cfg = tiny_experiment(
        tmp_path, **{"train.epochs": 2, "train.sharding": "replicate", "model.attention": True, "train.batch_size": 500}
    )
    generate_synthetic(cfg.data.synthetic, tmp_path / "work" / "data")
    runs = {w: run_training(cfg.with_overrides({"train.num_workers": w, "train.run_name": f"w{w}"})) for w in (1, 2)}
    per_worker = {w: [h["train_samples_per_worker"] for h in r["history"]] for w, r in runs.items()}
    assert per_worker[2][0] * 2 == pytest.approx(per_worker[1][0], abs=2)  # each worker trained on half
    aucs = {w: r["history"][-1]["val_auc"] for w, r in runs.items()}
    losses = {w: [round(h["train_loss"], 5) for h in r["history"]] for w, r in runs.items()}
    print(f"\n[train] val AUC after 2 epochs: 1 worker {aucs[1]:.4f}, 2 workers {aucs[2]:.4f}; train loss {losses}")
    # train_loss is each rank's own slice, so only val AUC compares whole models. At the tiny config's batch
    # of 128 (125 steps an epoch) its training is chaotic: in one process, averaging two half-batch gradients
    # instead of one whole-batch gradient (float rounding alone) moved val AUC by 0.004-0.012 and the seed by
    # 0.04, so 1 vs 2 workers differed by 0.0145 here and 0.028 in CI without any difference in the steps.
    # With 32 steps an epoch rounding has not grown yet: measured 0.7214 vs 0.7249. The steps themselves are
    # checked exactly in tests/training/test_loop.py (the ranks' mean gradient is the 1-worker gradient).
    assert aucs[2] == pytest.approx(aucs[1], abs=0.01)
