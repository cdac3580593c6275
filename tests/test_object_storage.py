"""Every stage on object storage: the CLI end to end with every path on s3:// (a real S3-protocol server on
loopback), leaving nothing in the local work folder.

    data build -> embed -> train -> tune (register + promote) -> serve registry://NAME@production -> evaluate
"""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from seqctr.platform.config import CONFIGS_DIR, load_config
from seqctr.platform.data.synthetic import generate_synthetic
from seqctr.platform.registry import Registry
from seqctr.platform.storage import filesystem_for, list_names, upload_dir

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_files(root: str) -> list[str]:
    """Every object under `root`, relative to it."""
    fs, base = filesystem_for(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)


def run(args: list[str]) -> dict:
    """One `seqctr ...` command in-process; its JSON report."""
    from seqctr.cli.main import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output[-4000:]
    lines = result.output.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the JSON report is printed last
    return json.loads("\n".join(lines[start:]))


def test_every_stage_on_s3_leaves_the_work_folder_empty(ray_session, s3_root, tmp_path_factory, monkeypatch):
    from ray import serve

    from seqctr.cli.serve import deploy, serve_args

    work = tmp_path_factory.mktemp("work")  # the user's folder: must stay empty
    outside = tmp_path_factory.mktemp("outside")  # where the log is generated before it is uploaded
    monkeypatch.chdir(work)
    monkeypatch.setenv("SEQCTR_CACHE_DIR", str(outside / "cache"))  # downloads are cached, never in `work`
    synthetic = load_config(CONFIGS_DIR / "tiny.yaml").data.synthetic
    data = generate_synthetic(synthetic, outside / "data")
    upload_dir(data["events_path"], f"{s3_root}/data/events")
    upload_dir(outside / "data" / "items", f"{s3_root}/data/items")

    config = str(CONFIGS_DIR / "tiny.yaml")
    paths = [
        f"data.events={s3_root}/data/events",
        f"data.items={s3_root}/data/items",
        f"data.samples={s3_root}/samples",
        f"embed.out={s3_root}/embeddings",
        f"train.storage_path={s3_root}/runs",
        f"registry.root={s3_root}/registry",
        "train.epochs=1",
    ]
    common = ["--config", config] + [arg for setting in paths for arg in ("--set", setting)]
    times: dict[str, float] = {}

    def timed(stage: str, args: list[str]) -> dict:
        start = time.perf_counter()
        out = run(args)
        times[stage] = round(time.perf_counter() - start, 1)
        return out

    built = timed("data build", ["data", "build", *common])
    assert built["paths"]["train"] == f"{s3_root}/samples/train" and built["rows"]["train"] > 0
    assert "_SUCCESS" in list_names(f"{s3_root}/samples")
    embedded = timed("embed", ["embed", *common])
    assert embedded["path"] == f"{s3_root}/embeddings" and embedded["rows"] == synthetic.items
    trained = timed("train", ["train", *common])
    assert trained["best_checkpoint"].startswith(f"{s3_root}/runs/seqctr/") and trained["test"]["auc"] > 0.55
    assert trained["latest"] == f"{s3_root}/runs/seqctr/latest.json"
    tuned = timed("tune", ["tune", *common, "--samples", "2", "--max-concurrent", "1"])
    assert tuned["campaign_dir"].startswith(f"{s3_root}/runs/") and tuned["registry"]["version"] == "v0001"

    cfg = load_config(CONFIGS_DIR / "tiny.yaml", paths)
    registry = Registry(cfg.registry.root)
    production = registry.get(f"{cfg.registry.name}@production")
    assert production.path.startswith(f"{s3_root}/registry/") and production.source.startswith(f"{s3_root}/runs/")

    start = time.perf_counter()
    experiment = outside / "serve.yaml"
    experiment.write_text(cfg.to_yaml())
    args, _, _ = serve_args(experiment, ["serve.min_replicas=1", "serve.max_replicas=1"])
    port = free_port()
    served = deploy(args, {"model": f"registry://{cfg.registry.name}@production"}, name="seqctr_s3", port=port)
    try:
        body = {"user_id": "u1", "history": ["i1", "i2", "i3"], "candidates": ["i4", "i5"]}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/score", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == production.version == served["model"]["version"]
    finally:
        serve.shutdown()
    times["serve"] = round(time.perf_counter() - start, 1)

    monkeypatch.setenv("SEQCTR_REGISTRY", cfg.registry.root)  # evaluate takes no config: the registry by env
    evaluated = timed("evaluate", ["evaluate", "--checkpoint", f"registry://{cfg.registry.name}@production"])
    assert evaluated["events"] == f"{s3_root}/samples/test" and evaluated["auc"] > 0.55
    evaluated_latest = timed("evaluate latest", ["evaluate", "--checkpoint", f"{s3_root}/runs/seqctr/latest"])
    assert evaluated_latest["auc"] == pytest.approx(trained["test"]["auc"])

    assert os.listdir(work) == []  # nothing written locally: every stage read and wrote the store
    stored = s3_files(s3_root)
    for expected in ("samples/_SUCCESS", "samples/item_index.parquet", "embeddings/meta.json",
                     "runs/seqctr/latest.json", "registry/seqctr/aliases.json",
                     "registry/seqctr/versions/v0001.json"):  # fmt: skip
        assert expected in stored, expected
    assert any(f.startswith("runs/seqctr/") and f.endswith("/report/metrics.json") for f in stored)
    assert any(f.startswith(f"runs/{cfg.tune.campaign}/") and f.endswith("trials.csv") for f in stored)
    print(f"\n[s3 end to end] stage seconds: {times}; {len(stored)} objects in the bucket")
