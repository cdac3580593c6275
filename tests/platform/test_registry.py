"""Model registry: versions with lineage, aliases, promotion rules, rollback, concurrency, CLI, URIs."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from typer.testing import CliRunner

from seqctr.cli.models import models_app
from seqctr.platform import registry as registry_mod
from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.checkpoint import CheckpointError, save_checkpoint, update_metrics, verify_checkpoint
from seqctr.platform.registry import Registry, RegistryError, data_fingerprint, parse_ref, resolve_checkpoint_uri


def make_checkpoint(path: Path, val_auc: float | None = 0.7, **extra_json: dict) -> Path:
    torch.manual_seed(0)
    metrics = {} if val_auc is None else {"val_auc": val_auc, "val_logloss": round(1.0 - val_auc, 4)}
    return save_checkpoint(
        path,
        model=torch.nn.Linear(4, 1),
        config=ExperimentConfig(),
        item_index='{"ids": []}',
        metrics=metrics,
        extra_json=extra_json or None,
    )


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def ckpts(tmp_path: Path) -> dict[float, Path]:
    return {auc: make_checkpoint(tmp_path / f"ckpt_{auc}", auc) for auc in (0.6, 0.7, 0.8)}


def test_register_copies_a_verified_version_with_lineage(reg: Registry, ckpts: dict[float, Path]) -> None:
    rec = reg.register(
        "ctr", ckpts[0.7], run_id="campaign-1/trial_2", trial_config={"train.lr": 0.01}, data_fingerprint="abc123"
    )
    assert (rec.name, rec.version, rec.ref, rec.uri) == ("ctr", "v0001", "ctr@v0001", "registry://ctr@v0001")
    assert rec.run_id == "campaign-1/trial_2"
    assert rec.trial_config == {"train.lr": 0.01}
    assert rec.data_fingerprint == "abc123"
    assert rec.metrics == {"val_auc": 0.7, "val_logloss": 0.3}
    assert rec.source == str(ckpts[0.7].resolve()) and rec.parent is None
    assert rec.path == str(Path(reg.root) / "ctr" / "versions" / "v0001")
    verify_checkpoint(rec.path)  # the copy still verifies: lineage lives beside it, not inside
    stored = json.loads((Path(reg.root) / "ctr" / "versions" / "v0001.json").read_text())
    assert stored["run_id"] == "campaign-1/trial_2" and stored["created"].endswith("+00:00")
    # Later edits of the source (e.g. test metrics added) never reach the registered copy.
    update_metrics(ckpts[0.7], {"test_auc": 0.9})
    assert json.loads((Path(rec.path) / "metrics.json").read_text()) == {"val_auc": 0.7, "val_logloss": 0.3}
    assert reg.register("ctr", ckpts[0.8], run_id="r2").version == "v0002"


def test_list_get_and_refs(reg: Registry, ckpts: dict[float, Path]) -> None:
    for auc in (0.6, 0.7, 0.8):
        reg.register("ctr", ckpts[auc], run_id=f"run-{auc}")
    reg.register("other", ckpts[0.6], run_id="x")
    assert reg.list_models() == ["ctr", "other"]
    assert [r.version for r in reg.list_versions("ctr")] == ["v0001", "v0002", "v0003"]
    assert reg.get("ctr").version == "v0003"  # no production yet: latest
    assert reg.get("ctr@2").run_id == "run-0.7"
    assert reg.get("ctr@v2").version == reg.get("ctr@v0002").version == "v0002"
    reg.set_alias("ctr", "production", "v1")
    assert reg.get("ctr").version == "v0001"  # NAME alone = production
    assert reg.get("registry://ctr@production").version == "v0001"
    assert reg.get("ctr@latest").version == "v0003"
    assert reg.checkpoint_path("ctr@production") == str(Path(reg.root) / "ctr" / "versions" / "v0001")
    assert parse_ref("registry://ctr@v3") == ("ctr", "v3")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "unknown model 'nope' in registry .* \\(models: ctr\\)"),
        ("ctr@v9", "unknown version v0009 of model 'ctr' \\(versions: v0001\\)"),
        ("ctr@staging", "unknown alias 'staging' of model 'ctr' \\(aliases: none\\)"),
        ("ctr@", "malformed model ref 'ctr@'"),
        ("a/b@v1", "malformed model ref"),
        ("ctr@v1@v2", "malformed model ref"),
    ],
)
def test_get_errors_name_what_is_missing(reg: Registry, ckpts: dict[float, Path], ref: str, message: str) -> None:
    reg.register("ctr", ckpts[0.6], run_id="r")
    with pytest.raises(RegistryError, match=message):
        reg.get(ref)


def test_promote_moves_only_on_a_strictly_better_metric(reg: Registry, ckpts: dict[float, Path]) -> None:
    v1, v2, v3 = (reg.register("ctr", ckpts[a], run_id="r").version for a in (0.7, 0.8, 0.6))
    first = reg.promote("ctr", v1)
    assert (first.moved, first.previous, first.reason) == (True, None, "no current target")
    better = reg.promote("ctr", v2)
    assert better.moved and better.previous == "v0001"
    assert (better.candidate_value, better.previous_value) == (0.8, 0.7)
    worse = reg.promote("ctr", v3)
    assert not worse.moved
    assert (worse.candidate_value, worse.previous_value) == (0.6, 0.8)
    assert worse.reason == "candidate val_auc 0.6 is not higher than v0002's 0.8"
    assert reg.aliases("ctr") == {"production": "v0002"}
    equal = reg.promote("ctr", reg.register("ctr", ckpts[0.8], run_id="r").version)
    assert not equal.moved  # equal is not strictly better
    # A loss-like metric improves downwards: v0003 (logloss 0.4) beats v0002 (0.2)? no; v0001 (0.3)? no.
    by_loss = reg.promote("ctr", v3, metric="val_logloss")
    assert not by_loss.moved and "is not lower than v0002's 0.2" in by_loss.reason
    forced = reg.promote("ctr", v3, force=True)
    assert forced.moved and forced.reason.startswith("forced (candidate val_auc 0.6 is not higher")
    assert reg.get("ctr@production").version == "v0003"
    staging = reg.promote("ctr", v1, alias="staging")
    assert staging.moved and reg.aliases("ctr") == {"production": "v0003", "staging": "v0001"}


def test_promote_refuses_a_candidate_without_the_metric(reg: Registry, tmp_path: Path) -> None:
    v = reg.register("ctr", make_checkpoint(tmp_path / "nometric", None), run_id="r").version
    with pytest.raises(RegistryError, match="cannot promote ctr@v0001: it has no numeric metric 'val_auc'"):
        reg.promote("ctr", v)
    assert reg.promote("ctr", v, force=True).moved


def test_rollback_walks_back_through_the_history(reg: Registry, ckpts: dict[float, Path]) -> None:
    for auc in (0.6, 0.7, 0.8):
        reg.promote("ctr", reg.register("ctr", ckpts[auc], run_id="r").version)
    assert reg.aliases("ctr")["production"] == "v0003"
    assert reg.rollback("ctr").version == "v0002"
    assert reg.rollback("ctr").version == "v0001"
    with pytest.raises(RegistryError, match="alias 'production' of model 'ctr' has no earlier target"):
        reg.rollback("ctr")
    reg.promote("ctr", "v3")  # a move after rollbacks starts a new branch of the stack
    assert reg.rollback("ctr").version == "v0001"
    actions = [(h["action"], h["from"], h["to"]) for h in reg.alias_history("ctr")]
    assert actions == [
        ("promote", None, "v0001"),
        ("promote", "v0001", "v0002"),
        ("promote", "v0002", "v0003"),
        ("rollback", "v0003", "v0002"),
        ("rollback", "v0002", "v0001"),
        ("promote", "v0001", "v0003"),
        ("rollback", "v0003", "v0001"),
    ]
    with pytest.raises(RegistryError, match="alias 'staging' of model 'ctr' has no earlier target"):
        reg.rollback("ctr", alias="staging")


def test_set_alias_compare_and_swap(reg: Registry, ckpts: dict[float, Path]) -> None:
    for auc in (0.6, 0.7):
        reg.register("ctr", ckpts[auc], run_id="r")
    assert reg.set_alias("ctr", "production", 1, expected="") == "v0001"
    with pytest.raises(RegistryError, match="points to v0001, not v9: it was moved meanwhile"):
        reg.set_alias("ctr", "production", "v2", expected="v9")
    assert reg.set_alias("ctr", "production", "v2", expected="v1") == "v0002"
    with pytest.raises(RegistryError, match="invalid alias 'latest'"):
        reg.set_alias("ctr", "latest", "v1")
    with pytest.raises(RegistryError, match="unknown version v0007 of model 'ctr'"):
        reg.set_alias("ctr", "production", "v7")


def test_alias_pointing_nowhere_is_a_clear_error(reg: Registry, ckpts: dict[float, Path]) -> None:
    reg.promote("ctr", reg.register("ctr", ckpts[0.7], run_id="r").version)
    reg.register("ctr", ckpts[0.8], run_id="r")
    state = json.loads((Path(reg.root) / "ctr" / "aliases.json").read_text())
    state["aliases"]["production"] = "v0042"
    (Path(reg.root) / "ctr" / "aliases.json").write_text(json.dumps(state))
    with pytest.raises(
        RegistryError, match="alias 'production' of model 'ctr' points to version v0042, which does not"
    ):
        reg.get("ctr")
    with pytest.raises(RegistryError, match="points to version v0042, which does not exist; use force"):
        reg.promote("ctr", "v2")
    assert reg.promote("ctr", "v2", force=True).moved


def test_corrupted_source_or_copy_is_refused(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = make_checkpoint(tmp_path / "bad", 0.9)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch in model.safetensors"):
        reg.register("ctr", bad, run_id="r")
    with pytest.raises(CheckpointError, match="not a directory"):
        reg.register("ctr", tmp_path / "missing", run_id="r")

    good = make_checkpoint(tmp_path / "good", 0.9)
    real_copy = registry_mod._copy_files

    def copy_then_flip(src: Path, dst: str, files: list[str], fs: pafs.FileSystem) -> None:
        real_copy(src, dst, files, fs)
        target = Path(dst) / "config.json"
        target.write_bytes(target.read_bytes()[:-1] + b" ")

    monkeypatch.setattr(registry_mod, "_copy_files", copy_then_flip)
    with pytest.raises(RegistryError, match="copy of checkpoint .*good is corrupt: sha256 mismatch in config.json"):
        reg.register("ctr", good, run_id="r")
    versions = Path(reg.root) / "ctr" / "versions"
    assert os.listdir(versions) == []  # no half version, no temp folder left behind
    with pytest.raises(RegistryError, match="unknown model 'ctr'"):
        reg.list_versions("ctr")


def _register_and_promote(root: str, ckpt: str, barrier: mp.Barrier, queue: mp.Queue) -> None:
    barrier.wait()
    registry = Registry(root)
    record = registry.register("ctr", ckpt, run_id=f"pid-{os.getpid()}")
    result = registry.promote("ctr", record.version)
    queue.put((record.version, record.metrics["val_auc"], result.moved))


@pytest.fixture(params=["local", "s3"])
def shared_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry root on a local disk, or on the S3 server: writers there share nothing but the store."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return f"{request.getfixturevalue('s3_root')}/registry"


def test_concurrent_registrations_and_promotions_stay_consistent(
    shared_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 processes, each with its own Registry object and no shared lock (on S3 only conditional writes
    keep them apart), register and promote at once."""
    monkeypatch.setenv("SEQCTR_CACHE_DIR", str(tmp_path / "cache"))
    aucs = [0.61, 0.75, 0.62, 0.9, 0.7, 0.64, 0.8, 0.66]
    ckpts = [make_checkpoint(tmp_path / f"c{i}", auc) for i, auc in enumerate(aucs)]
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(len(ckpts)), ctx.Queue()
    procs = [ctx.Process(target=_register_and_promote, args=(shared_root, str(c), barrier, queue)) for c in ckpts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    results = [queue.get(timeout=5) for _ in procs]
    versions = sorted(v for v, _, _ in results)
    assert versions == [f"v{i:04d}" for i in range(1, 9)]  # unique, gap-free
    by_version = {v: auc for v, auc, _ in results}
    reg = Registry(shared_root)
    assert reg.aliases("ctr")["production"] == max(by_version, key=by_version.get)  # the best wins, any order
    chain = [h for h in reg.alias_history("ctr") if h["alias"] == "production"]
    assert len(chain) == sum(moved for _, _, moved in results)  # every move that was reported is recorded
    assert chain[0]["from"] is None
    assert all(a["to"] == b["from"] for a, b in zip(chain, chain[1:], strict=False))  # no lost update
    assert all(by_version[b["to"]] > by_version[b["from"]] for b in chain[1:])
    records = reg.list_versions("ctr")
    assert [r.version for r in records] == versions
    for record in records:  # every record matches its files
        assert record.metrics["val_auc"] == by_version[record.version]
        local = reg.local_checkpoint(record.ref)
        verify_checkpoint(local)
        assert hashlib.sha256((Path(local) / "manifest.json").read_bytes()).hexdigest() == record.manifest_sha256
    if not shared_root.startswith("s3://"):
        assert not [n for n in os.listdir(Path(shared_root) / "ctr" / "versions") if n.startswith(".")]
    store = "s3" if shared_root.startswith("s3://") else "a local disk"
    print(f"\n[registry] 8 writers on {store}: versions {versions}, {len(chain)} promotions")


def test_on_s3_a_claimed_slot_without_its_record_is_invisible(s3_root: str, ckpts: dict[float, Path]) -> None:
    """A writer that died after claiming v0002 (and even after copying files) leaves no visible version,
    and the next writer takes v0003; versions are refused to be rewritten."""
    import boto3

    reg = Registry(f"{s3_root}/registry")
    assert reg.register("ctr", ckpts[0.6], run_id="a").version == "v0001"
    bucket = s3_root[len("s3://") :]
    boto3.client("s3").put_object(Bucket=bucket, Key="registry/ctr/versions/v0002.claim", Body=b"{}")
    boto3.client("s3").put_object(Bucket=bucket, Key="registry/ctr/versions/v0002/model.safetensors", Body=b"x")
    assert [r.version for r in reg.list_versions("ctr")] == ["v0001"]
    assert reg.register("ctr", ckpts[0.8], run_id="b").version == "v0003"
    with pytest.raises(RegistryError, match="unknown version v0002"):
        reg.get("ctr@v2")
    with pytest.raises(RegistryError, match="already exists"):
        reg._store.write_record("ctr/versions/v0003.json", "{}")
    assert reg.get("ctr@v3").run_id == "b"


def test_cli_commands(reg: Registry, ckpts: dict[float, Path]) -> None:
    runner = CliRunner()
    root = ["--root", reg.root]
    out = runner.invoke(models_app, ["register", str(ckpts[0.7]), "--name", "ctr", "--run-id", "c1", *root])
    assert out.exit_code == 0, out.output
    assert "registered ctr@v0001" in out.output
    assert runner.invoke(models_app, ["register", str(ckpts[0.8]), "-n", "ctr", *root]).exit_code == 0
    assert runner.invoke(models_app, ["register", str(ckpts[0.6]), "-n", "ctr", *root]).exit_code == 0

    out = runner.invoke(models_app, ["promote", "ctr", "v1", *root])
    assert out.exit_code == 0 and "promoted ctr@v0001 to production" in out.output
    out = runner.invoke(models_app, ["promote", "ctr", "2", *root])
    assert out.exit_code == 0 and json.loads(out.output[out.output.index("{") :])["moved"] is True
    out = runner.invoke(models_app, ["promote", "ctr", "v3", *root])
    assert out.exit_code == 0
    assert "not promoted: candidate val_auc 0.6 is not higher than v0002's 0.8; production stays v0002" in out.output

    out = runner.invoke(models_app, ["list", *root])
    assert out.exit_code == 0
    assert out.output.splitlines()[2].split() == ["ctr", "3", "production=v0002"]
    out = runner.invoke(models_app, ["list", "ctr", *root])
    rows = [line.split() for line in out.output.splitlines()[2:]]
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("v0001", "0.7000", "-"),
        ("v0002", "0.8000", "production"),
        ("v0003", "0.6000", "-"),
    ]
    out = runner.invoke(models_app, ["list", "ctr", "--json", *root])
    assert [v["aliases"] for v in json.loads(out.output)] == [["-"], ["production"], ["-"]]

    out = runner.invoke(models_app, ["show", "ctr@production", *root])
    shown = json.loads(out.output)
    assert (shown["version"], shown["uri"], shown["aliases"]) == ("v0002", "registry://ctr@v0002", ["production"])

    out = runner.invoke(models_app, ["rollback", "ctr", *root])
    assert out.exit_code == 0 and "production of ctr rolled back to v0001" in out.output

    out = runner.invoke(models_app, ["show", "ctr@v9", *root])
    assert out.exit_code == 2
    assert "error: unknown version v0009 of model 'ctr'" in out.output and "Traceback" not in out.output
    out = runner.invoke(models_app, ["rollback", "nope", *root])
    assert out.exit_code == 2 and "error: unknown model 'nope'" in out.output
    out = runner.invoke(models_app, ["register", str(Path(reg.root) / "missing"), "-n", "ctr", *root])
    assert out.exit_code == 2 and "error: checkpoint" in out.output and "not a directory" in out.output


def test_cli_reads_the_root_from_the_config(tmp_path: Path, ckpts: dict[float, Path]) -> None:
    root = tmp_path / "from_config"
    args = ["--set", f"registry.root={root}", "--set", "registry.name=cfgmodel"]
    out = CliRunner().invoke(models_app, ["register", str(ckpts[0.7]), *args])
    assert out.exit_code == 0, out.output
    assert Registry(root).list_models() == ["cfgmodel"]
    out = CliRunner().invoke(models_app, ["list", "--set", "registry.bogus=1"])
    assert out.exit_code == 2 and "error: --set registry.bogus: unknown key 'registry.bogus'" in out.output


def test_resolve_checkpoint_uri(
    reg: Registry, ckpts: dict[float, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = reg.register("ctr", ckpts[0.7], run_id="r")
    reg.promote("ctr", v1.version)
    reg.register("ctr", ckpts[0.8], run_id="r")
    cfg = ExperimentConfig().with_overrides({"registry.root": reg.root})
    assert resolve_checkpoint_uri("registry://ctr@production", cfg) == v1.path
    assert resolve_checkpoint_uri("registry://ctr@v2", cfg).endswith("/ctr/versions/v0002")
    assert resolve_checkpoint_uri("registry://ctr", cfg) == v1.path
    monkeypatch.setenv("SEQCTR_REGISTRY", reg.root)
    assert resolve_checkpoint_uri("registry://ctr@latest", None).endswith("/ctr/versions/v0002")
    monkeypatch.delenv("SEQCTR_REGISTRY")
    monkeypatch.chdir(tmp_path)  # the default root, work/registry, resolved against the cwd
    default = Registry(tmp_path / "work" / "registry").register("seqctr", ckpts[0.6], run_id="r")
    assert resolve_checkpoint_uri("registry://seqctr@production".replace("@production", ""), None) == default.path

    monkeypatch.chdir(ckpts[0.6].parent)
    assert resolve_checkpoint_uri(ckpts[0.6].name, None) == str(ckpts[0.6].resolve())
    assert resolve_checkpoint_uri(f"file://{ckpts[0.6]}", None) == str(ckpts[0.6])
    with pytest.raises(CheckpointError, match="checkpoint .*nowhere: does not exist"):
        resolve_checkpoint_uri(str(tmp_path / "nowhere"), None)
    with pytest.raises(RegistryError, match="unknown alias 'staging' of model 'ctr'"):
        resolve_checkpoint_uri("registry://ctr@staging", cfg)
    with pytest.raises(RegistryError, match="malformed model ref 'registry://'"):
        resolve_checkpoint_uri("registry://", cfg)
    # A registered version whose files were tampered with is refused at resolution, naming the file.
    (Path(v1.path) / "item_index.json").write_text('{"ids": ["x"]}')
    with pytest.raises(CheckpointError, match="sha256 mismatch in item_index.json"):
        resolve_checkpoint_uri("registry://ctr@production", cfg)


def test_warm_start_lineage_pins_the_parent_version(reg: Registry, ckpts: dict[float, Path], tmp_path: Path) -> None:
    parent = reg.register("ctr", ckpts[0.7], run_id="r")
    reg.promote("ctr", parent.version)
    parent_dir = resolve_checkpoint_uri(
        "registry://ctr@production", ExperimentConfig().with_overrides({"registry.root": reg.root})
    )
    child_ckpt = make_checkpoint(
        tmp_path / "child", 0.75, **{"lineage.json": {"parent": "registry://ctr@production", "parent_dir": parent_dir}}
    )
    reg.promote("ctr", reg.register("ctr", ckpts[0.8], run_id="r").version)  # production moves on meanwhile
    child = reg.register("ctr", child_ckpt, run_id="retrain")
    assert child.parent == "ctr@v0001"
    assert reg.register("ctr", ckpts[0.6], run_id="r", parent="registry://ctr@production").parent == "ctr@v0002"


def test_registry_on_an_object_store_filesystem(ckpts: dict[float, Path], tmp_path: Path, monkeypatch) -> None:
    """The non-local path (no rename, no flock on the store): an fsspec in-memory filesystem."""
    fsspec = pytest.importorskip("fsspec")
    monkeypatch.setenv("SEQCTR_CACHE_DIR", str(tmp_path / "cache"))
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    reg = Registry(f"/reg-{tmp_path.name}", filesystem=fs)
    v1 = reg.register("ctr", ckpts[0.7], run_id="r")
    v2 = reg.register("ctr", ckpts[0.8], run_id="r")
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert reg.promote("ctr", "v1").moved and reg.promote("ctr", "v2").moved
    assert not reg.promote("ctr", "v1").moved
    assert reg.rollback("ctr").version == "v0001"
    local = reg.local_checkpoint("ctr@production")
    assert local.startswith(str(tmp_path / "cache")) and local.endswith("/ctr/v0001")
    verify_checkpoint(local)
    assert reg.local_checkpoint("ctr@production") == local  # cached


def test_data_fingerprint_follows_file_stamps_not_bookkeeping(tmp_path: Path) -> None:
    data = tmp_path / "events"
    (data / "day=1").mkdir(parents=True)
    (data / "day=1" / "part-0.parquet").write_bytes(b"abc")
    (data / "part-1.parquet").write_bytes(b"def")
    first = data_fingerprint(data)
    (data / "_SUCCESS").write_text("")
    (data / ".part-1.parquet.crc").write_text("x")
    assert data_fingerprint(data) == data_fingerprint(f"file://{data}") == first
    (data / "part-1.parquet").write_bytes(b"deg")
    assert data_fingerprint(data) != first
    assert len(data_fingerprint(data / "part-1.parquet")) == 64
    with pytest.raises(FileNotFoundError, match="data .*nothing: does not exist"):
        data_fingerprint(tmp_path / "nothing")


def test_cli_module_imports_neither_torch_nor_ray() -> None:
    code = "import sys, seqctr.cli.models; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_versions_that_share_a_table_store_it_once(shared_root: str, tmp_path: Path, monkeypatch) -> None:
    """Two epochs of one run reference one text table; registered, the table is copied once to
    NAME/tables/, each version still verifies, and a download (S3) brings the table along."""
    from seqctr.platform.model.checkpoint import SharedTables, read_checkpoint
    from seqctr.platform.storage import list_names

    monkeypatch.setenv("SEQCTR_CACHE_DIR", str(tmp_path / "cache"))
    model = torch.nn.Linear(4, 1)
    model.register_buffer("text_table", torch.arange(12, dtype=torch.float32).reshape(6, 2))
    shared = SharedTables(str(tmp_path / "run" / "tables"))
    reg = Registry(shared_root)
    for epoch, auc in enumerate((0.7, 0.8)):
        ckpt = save_checkpoint(
            tmp_path / "run" / f"epoch_{epoch:03d}",
            model=model,
            config=ExperimentConfig(),
            item_index='{"ids": []}',
            metrics={"val_auc": auc},
            shared_tables=shared,
        )
        reg.register("ctr", ckpt, run_id="run")
    assert len(list_names(f"{reg.root}/ctr/tables")) == 1
    for version in ("v1", "v2"):
        local = reg.local_checkpoint(f"ctr@{version}")
        assert not (Path(local) / "item_embeddings.safetensors").exists()
        assert torch.equal(read_checkpoint(local).text_tables["text_table"], model.text_table)
