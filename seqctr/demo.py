"""`make demo`: the main job end to end on the embedded default (local Ray, synthetic data, MiniLM).

    seqctr demo --config configs/default.yaml

Stages: generate -> build samples -> embed items -> train -> tune (small) -> promote -> serve ->
score. Each stage prints its time; a re-run reuses what is already built (same inputs, same outputs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.runs import POINTER_FILE, read_latest, run_root
from seqctr.platform.storage import atomic_write_text

# A small campaign: 3 trials x 2 epochs on a 40k-sample subsample of train (val stays whole, so the
# winner's val AUC is comparable with production's and the registry decides the promotion).
DEMO_TUNE = {
    "tune.num_samples": 3,
    "train.epochs": 2,
    "train.max_train_samples": 40_000,
    "tune.campaign": "demo-campaign",
}


def plain(value: Any) -> Any:
    """JSON's own types for numpy scalars, recursively: a trial's `np.int64(16)` prints as 16, not "16".

    (The campaign's best config comes from a pandas row; `json.dumps(default=str)` would quote it.)"""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class Stages:
    """Runs named stages, printing progress and keeping their wall times for the summary."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"\n=== [{len(self.times) + 1}] {name}", flush=True)
        start = time.perf_counter()
        out = fn()
        self.times[name] = time.perf_counter() - start
        print(f"=== {name}: {self.times[name]:.1f}s", flush=True)
        return out


def _generate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Generate once per synthetic config: the config is stored beside the data and compared."""
    from seqctr.platform.data.synthetic import generate_synthetic, oracle_auc

    out = Path(cfg.data.events).parent
    stamp = out / "synthetic.json"
    wanted = cfg.data.synthetic.model_dump()
    if stamp.exists() and json.loads(stamp.read_text()).get("config") == wanted:
        saved = json.loads(stamp.read_text())
        print(f"reusing synthetic log at {out}")
        return saved["report"]
    report = generate_synthetic(cfg.data.synthetic, out)
    report["oracle_auc"] = oracle_auc(report["events_path"])
    atomic_write_text(stamp, json.dumps({"config": wanted, "report": report}, default=str))
    return report


def _train(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train (or reuse the run trained with this exact config), then register it; the first version
    becomes `production`, so the endpoint has a model even before any campaign."""
    from seqctr.training.trainer import run_training
    from seqctr.tuning.campaign import register_best

    root = Path(run_root(cfg.train.storage_path, cfg.train.run_name))  # the demo's storage is local
    if (root / POINTER_FILE).exists():
        report = Path(read_latest(root)["run_dir"]) / "report" / "metrics.json"
        saved = json.loads(report.read_text()) if report.exists() else {}
        if saved.get("config") == cfg.to_dict() and saved.get("registry"):
            print(f"reusing trained run {report.parent.parent} (registry {saved['registry']['version']})")
            return {
                "test": saved["test"],
                "best_checkpoint": saved["checkpoint"],
                "registry": saved["registry"],
                "run_dir": str(report.parent.parent),
            }
    result = run_training(cfg)
    report = Path(result["run_dir"]) / "report" / "metrics.json"
    registry = register_best(cfg, result["best_checkpoint"], cfg.train.run_name, {})
    print(f"registered {cfg.registry.name}@{registry['version']}: {registry['promotion']}")
    merged = {**json.loads(report.read_text()), "config": cfg.to_dict(), "registry": registry}
    atomic_write_text(report, json.dumps(merged, indent=2, default=float))
    return {**result, "registry": registry}


def full_budget_config(cfg: ExperimentConfig, best_config: dict[str, Any]) -> ExperimentConfig:
    """The campaign winner's settings on production's budget (the whole train split, production's epochs),
    so the promotion compares like with like: a trial trained on a subsample never faces a full run."""
    tuned = {key: v for key, v in plain(best_config).items() if key not in DEMO_TUNE}
    return cfg.with_overrides({**tuned, "train.run_name": f"{cfg.train.run_name}-challenger"})


def _tune(cfg: ExperimentConfig) -> dict[str, Any]:
    """A small campaign picks a challenger; retrained like production, it is promoted only if it beats it."""
    from seqctr.training.trainer import run_training
    from seqctr.tuning.campaign import register_best, run_campaign

    tune_cfg = cfg.with_overrides(DEMO_TUNE)
    campaign_dir = Path(cfg.train.storage_path) / DEMO_TUNE["tune.campaign"]
    summary_file = campaign_dir / "summary.json"
    if summary_file.exists():
        print(f"reusing campaign {campaign_dir}")
        return json.loads(summary_file.read_text())
    # A campaign folder without a summary is an interrupted campaign: finish it, do not start over.
    resume = DEMO_TUNE["tune.campaign"] if campaign_dir.exists() else None
    summary = plain(run_campaign(tune_cfg, resume=resume, register=False))
    challenger = full_budget_config(cfg, summary["best_config"])
    if challenger.with_overrides({"train.run_name": cfg.train.run_name}) == cfg:
        summary["registry"] = {"promotion": "the winner is the default config: production already is it"}
    else:
        print(f"retraining the winner {summary['best_config']} on the whole train split, like production")
        retrained = run_training(challenger)
        summary["challenger"] = {"test": retrained["test"], "best_checkpoint": retrained["best_checkpoint"]}
        summary["registry"] = register_best(
            cfg, retrained["best_checkpoint"], challenger.train.run_name, summary["best_config"]
        )
    atomic_write_text(summary_file, json.dumps(summary, indent=2, default=str))
    return summary


def _serve_and_score(cfg: ExperimentConfig, samples_dir: str) -> dict[str, Any]:
    """Start the endpoint on the production model and send one real request built from the test split."""
    import pyarrow.parquet as pq
    from ray import serve

    from seqctr.platform.data.contract import list_parquet_files
    from seqctr.serving.app import make_app
    from seqctr.serving.client import CTRClient

    served = cfg.with_overrides({"serve.model": f"registry://{cfg.registry.name}@production"})
    serve.start(http_options={"host": served.serve.host, "port": served.serve.port})
    serve.run(make_app(served), name="seqctr", route_prefix="/")  # returns once every replica is up
    url = f"http://{served.serve.host}:{served.serve.port}"
    row = pq.read_table(list_parquet_files(f"{samples_dir}/test")[0]).slice(0, 50).to_pylist()
    sample = max(row, key=lambda r: len(r["history"]))
    candidates = list(dict.fromkeys([sample["target"]] + [r["target"] for r in row]))[:10]
    client = CTRClient(url)
    clicks = [{"item_id": i, "timestamp": t} for i, t in zip(sample["history"], sample["history_ts"], strict=True)]
    request = {
        "user_id": sample["user_id"],
        "history": clicks,
        "timestamp": sample["timestamp"],
        "candidates": candidates,
    }
    response = client.rank(
        clicks, candidates, k=5, timestamp=sample["timestamp"], user_id=sample["user_id"]
    ).model_dump()
    return {"url": url, "request": request, "response": response}


def run_demo(cfg: ExperimentConfig, serve_seconds: float = 0) -> dict[str, Any]:
    from seqctr.platform.data.embeddings import embed_items
    from seqctr.training.trainer import ensure_samples

    stages = Stages()
    data = stages.run("generate synthetic log", lambda: _generate(cfg))
    samples = stages.run("build samples (Ray Data)", lambda: ensure_samples(cfg))
    embeds = stages.run("embed items (Ray Data + BERT)", lambda: embed_items(cfg.data.items, cfg.embed))
    trained = stages.run("train (Ray Train)", lambda: _train(cfg))
    campaign = stages.run("tune + promote (Ray Tune + registry)", lambda: _tune(cfg))
    served = stages.run("serve + score (Ray Serve)", lambda: _serve_and_score(cfg, cfg.data.samples))
    summary = {
        "events": data.get("events"),
        "oracle_auc_whole_log": data.get("oracle_auc"),
        "samples": {k: samples.get(k) for k in ("rows", "samples_per_s") if k in samples},
        "embeddings": {k: embeds.get(k) for k in ("rows", "dim", "items_per_s", "cached")},
        "train_test_auc": trained["test"].get("auc"),
        "oracle_auc_test_split": trained["test"].get("oracle_auc"),
        "train_lift_ratio": trained["test"].get("lift_ratio"),
        "train_registry": trained.get("registry"),
        "campaign_best": campaign.get("best_config"),
        "campaign_best_val_auc": campaign.get("best_val_auc"),
        "campaign_test_auc": campaign.get("test", {}).get("auc"),
        "campaign_challenger_test_auc": campaign.get("challenger", {}).get("test", {}).get("auc"),
        "campaign_registry": campaign.get("registry"),
        "served_model": f"{served['response'].get('model')}@{served['response'].get('version')}",
        "paths": {
            "report": str(Path(trained.get("run_dir", "")) / "report") if trained.get("run_dir") else None,
            "best_checkpoint": trained.get("best_checkpoint"),
            "latest_run": str(Path(run_root(cfg.train.storage_path, cfg.train.run_name)) / "latest"),
            "registry": cfg.registry.root,
        },
        "stage_seconds": {k: round(v, 1) for k, v in stages.times.items()},
    }
    summary = plain(summary)  # numbers as numbers when printed
    print("\n=== summary")
    print(json.dumps(summary, indent=2, default=str))
    print("\nrequest:  POST", served["url"] + "/v1/rank")
    print(json.dumps(served["request"], indent=2, default=str))
    print("response:")
    print(json.dumps(served["response"], indent=2, default=str))
    if serve_seconds > 0:
        print(f"\nthe endpoint stays up for {serve_seconds:.0f}s at {served['url']} (Ctrl-C to stop it sooner)")
        time.sleep(serve_seconds)
    print(
        f"\nthe endpoint at {served['url']} stops with this demo. To serve again: "
        f"seqctr serve --model registry://{cfg.registry.name}@production"
    )
    return summary
