from __future__ import annotations

import json

import pytest
import torch

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint, verify_checkpoint


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("text_table", torch.arange(6, dtype=torch.float32).reshape(3, 2))


def _save(tmp_path, **kw):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        config=ExperimentConfig(),
        item_index='{"ids": []}',
        metrics={"val_auc": 0.7},
        optimizer=opt,
        train_state={"epoch": 3},
        **kw,
    )
    return path, model, opt


def test_round_trip_restores_weights_optimizer_and_state(tmp_path):
    path, model, opt = _save(tmp_path, extra_json={"bert_config.json": {"hidden_size": 4}})
    contents = read_checkpoint(path, with_optimizer=True)
    fresh = Tiny()
    fresh.load_state_dict(contents.full_state())
    assert torch.equal(fresh.lin.weight, model.lin.weight)
    assert torch.equal(fresh.text_table, model.text_table)
    assert "text_table" not in contents.model_state  # the item table lives in its own file
    assert contents.train_state["epoch"] == 3
    assert contents.metrics == {"val_auc": 0.7}
    assert contents.extra_json["bert_config.json"] == {"hidden_size": 4}
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    opt2.load_state_dict(contents.optimizer_state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_no_pickle_files(tmp_path):
    path, _, _ = _save(tmp_path)
    names = {p.name for p in path.iterdir()}
    assert all(n.endswith((".json", ".safetensors")) for n in names), names
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}


def test_flipped_byte_is_refused_with_the_file_name(tmp_path):
    path, _, _ = _save(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch in model.safetensors"):
        read_checkpoint(path)


def test_missing_file_is_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    (path / "item_index.json").unlink()
    with pytest.raises(CheckpointError, match="missing file item_index.json"):
        verify_checkpoint(path)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    path, _, _ = _save(tmp_path)
    before = (path / "manifest.json").read_text()

    class Boom(Tiny):
        def state_dict(self, *a, **k):  # noqa: ANN002, ANN003
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, model=Boom(), config=ExperimentConfig(), item_index="{}", metrics={})
    assert (path / "manifest.json").read_text() == before
    verify_checkpoint(path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checkpoint_from_before_click_ages_loads_without_them(tmp_path):
    """A model saved before `model.time_features` existed has no age embedding: it loads as such."""
    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex
    from seqctr.platform.model.predictor import load_model

    cfg = ExperimentConfig().with_overrides({"model.text": False, "model.id_buckets": 64})
    index = ItemIndex.from_ids(["a", "b"])
    old = build_model(cfg.model.model_copy(update={"time_features": False}), len(index), None)
    path = save_checkpoint(tmp_path / "old", model=old, config=cfg, item_index=index.to_json(), metrics={})
    loaded = load_model(path)
    assert loaded.model.age_embedding is None and loaded.config.model.time_features is False
    for key, tensor in old.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)


def test_fine_tuned_checkpoint_loads_and_predicts_the_same(tmp_path):
    """Fine-tune mode keeps no text table (texts go through BERT): the checkpoint still rebuilds."""
    from transformers import BertConfig, BertModel

    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex
    from seqctr.platform.model.predictor import BERT_CONFIG_FILE, load_model

    cfg = ExperimentConfig().with_overrides({"model.bert_trainable_layers": 1, "model.id_buckets": 64})
    index = ItemIndex.from_ids(["a", "b", "c"])
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
    )
    ids = torch.randint(1, 50, (len(index), 4)) * (torch.arange(len(index)) >= 2)[:, None]
    model = build_model(cfg.model, len(index), None, bert=bert, item_tokens=(ids, (ids > 0).long())).eval()
    path = save_checkpoint(
        tmp_path / "ft",
        model=model,
        config=cfg,
        item_index=index.to_json(),
        metrics={},
        extra_json={BERT_CONFIG_FILE: bert.config.to_dict()},
    )
    loaded = load_model(path)
    batch = {
        "hist_idx": torch.tensor([[2, 3], [4, 0]]),
        "hist_bucket": torch.tensor([[5, 6], [7, 0]]),
        "hist_len": torch.tensor([2, 1]),
        "target_idx": torch.tensor([4, 2]),
        "target_bucket": torch.tensor([7, 5]),
    }
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), model(batch), atol=1e-6, rtol=0)


def test_shared_table_is_written_once_and_referenced(tmp_path):
    """Epoch checkpoints of a run reference the frozen text table by sha256 instead of copying it; the
    checkpoint plus RUN/tables/ rebuilds it exactly, and a missing or altered table is named."""
    from seqctr.platform.model.checkpoint import SharedTables, find_shared

    run = tmp_path / "run"
    shared = SharedTables(str(run / "tables"))
    torch.manual_seed(0)
    model = Tiny()
    paths = [
        save_checkpoint(
            run / f"epoch_{e:03d}",
            model=model,
            config=ExperimentConfig(),
            item_index=b"",
            metrics={},
            shared_tables=shared,
        )
        for e in range(3)
    ]
    tables = sorted((run / "tables").iterdir())
    assert len(tables) == 1  # one copy for the whole run
    for path in paths:
        assert not (path / "item_embeddings.safetensors").exists()
        manifest = verify_checkpoint(path)
        entry = manifest["shared"]["item_embeddings.safetensors"]
        assert find_shared(str(path), entry["sha256"]) == str(tables[0])
        assert torch.equal(read_checkpoint(path).text_tables["text_table"], model.text_table)

    tables[0].write_bytes(tables[0].read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="sha256 mismatch in shared item_embeddings.safetensors"):
        verify_checkpoint(paths[0])
    tables[0].unlink()
    with pytest.raises(CheckpointError, match="shared item_embeddings.safetensors .*not found in the tables/ folder"):
        read_checkpoint(paths[1])


def test_item_index_is_stored_as_parquet(tmp_path):
    from seqctr.platform.model.ctr import build_model
    from seqctr.platform.model.features import ItemIndex
    from seqctr.platform.model.predictor import load_model

    index = ItemIndex.from_ids([f"i{k}" for k in range(100_000)])
    cfg = ExperimentConfig().with_overrides({"model.text": False, "model.id_buckets": 64})
    model = build_model(cfg.model, len(index), None)
    path = save_checkpoint(tmp_path / "c", model=model, config=cfg, item_index=index.to_parquet_bytes(), metrics={})
    assert (path / "item_index.parquet").exists() and not (path / "item_index.json").exists()
    loaded = load_model(path)
    assert loaded.index == index and loaded.index.lookup(["i99999", "nope"]).tolist() == [100_001, 1]
