"""What a training run needs besides data: the item index, the text table, BERT tokens.

Prepared once in the driver (one campaign shares them across all its trials) and handed to workers
as Ray object references, so large tables travel through the object store, not through configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.data.contract import DataError, list_parquet_files, open_parquet
from seqctr.platform.data.counts import ITEM_COUNTS_FILE
from seqctr.platform.data.embeddings import embed_items, load_bert, load_embeddings, tokenize_texts
from seqctr.platform.model.checkpoint import read_checkpoint
from seqctr.platform.model.ctr import CTRModel
from seqctr.platform.model.features import ItemIndex
from seqctr.platform.model.predictor import BERT_CONFIG_FILE
from seqctr.platform.model.side import SideLayout, item_side_tables
from seqctr.platform.storage import filesystem_for, is_file, join, read_text


@dataclass
class ModelAssets:
    """Everything but the weights that rebuilds the model; shared by every worker and trial."""

    index_bytes: bytes  # the item index as Parquet (features.ItemIndex.to_parquet_bytes)
    text_dim: int
    text_table: Any = None  # ObjectRef[np.ndarray (num_items, Dt)] or None (id-only)
    item_tokens: Any = None  # ObjectRef[(input_ids, attention_mask)] when fine-tuning BERT
    init_from: str | None = None  # local checkpoint dir to warm start from
    extra_json: dict[str, Any] = field(default_factory=dict)  # extra JSON files in each checkpoint
    side_tables: Any = None  # ObjectRef[dict[str, np.ndarray]]: item-aligned side tables (side.py)
    side_stats: dict[str, Any] = field(default_factory=dict)  # the train split's statistics (the build's)


DATA_STATISTICS = ("num_mean", "num_std", "prior_ctr")  # side.SampleSide buffers set from the build


def _resolve(value: Any) -> Any:
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def aligned_text_table(index: ItemIndex, ids: list[str], matrix: np.ndarray) -> np.ndarray:
    """Row i = text embedding of index item i; padding, unknown and text-less items are zeros."""
    table = np.zeros((len(index), matrix.shape[1]), dtype=np.float32)
    rows = index.lookup(ids)
    known = rows >= 2
    table[rows[known]] = matrix[known]
    return table


def read_item_texts(items_path: str) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    for file in list_parquet_files(items_path):
        table = pq.read_table(file, columns=["item_id", "text"])
        ids += [str(x) for x in table.column("item_id").to_pylist()]
        texts += table.column("text").to_pylist()
    return ids, texts


def read_item_columns(items_path: str, names: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """(item ids, {column: values}) of the item table; a declared column a file lacks is a DataError."""
    ids: list[str] = []
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for file in list_parquet_files(items_path):
        missing = [n for n in names if n not in open_parquet(file).schema_arrow.names]
        if missing:
            raise DataError(
                f"{file}: column {missing[0]!r} (data.features.item) is missing; for a table without it, leave it "
                "out of data.features.item and data.features.user_item_counts (the default config reads category)"
            )
        table = pq.read_table(file, columns=["item_id", *names])
        ids += [str(x) for x in table.column("item_id").to_pylist()]
        for name in names:
            columns[name] += table.column(name).to_pylist()
    return ids, columns


def _side_assets(cfg: ExperimentConfig, index: ItemIndex) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Item-aligned side tables and the samples build's train statistics (data.features)."""
    layout = SideLayout.from_config(cfg.data.features)
    meta_path = join(cfg.data.samples, "_SUCCESS")
    stats = json.loads(read_text(meta_path)).get("report", {}).get("train_stats", {}) if is_file(meta_path) else {}
    if layout.event_num and not stats.get("numeric"):
        raise DataError(f"{cfg.data.samples}: built without data.features.event; rebuild with `seqctr data build`")
    names = [*layout.item_cat, *layout.item_num]
    rows, columns = np.zeros(0, np.int64), {}
    if names:
        ids, columns = read_item_columns(cfg.data.items, names)
        rows = index.lookup(ids)
    counts = None
    if layout.counts:
        path = join(cfg.data.samples, ITEM_COUNTS_FILE)
        if not is_file(path):
            raise DataError(f"{path} is missing: data.features.counts needs a rebuild (`seqctr data build`)")
        fs, inner = filesystem_for(path)
        table = pq.read_table(inner, filesystem=fs)
        counts = (
            index.lookup(table.column("item_id")),
            table.column("impressions").to_numpy().astype(np.float32),
            table.column("clicks").to_numpy().astype(np.float32),
        )
    return item_side_tables(layout, cfg.model, rows, columns, len(index), counts), stats


def prepare_assets(cfg: ExperimentConfig, index: ItemIndex, init_from: str | None = None) -> ModelAssets:
    """Embed item texts (cached), align them with the index, tokenise for fine-tuning if asked; the
    side tables and statistics when data.features asks for them."""
    assets = ModelAssets(index_bytes=index.to_parquet_bytes(), text_dim=0, init_from=init_from)
    if cfg.data.features.active:
        tables, assets.side_stats = _side_assets(cfg, index)
        assets.side_tables = ray.put(tables)
    if not cfg.model.text:
        return assets
    report = embed_items(cfg.data.items, cfg.embed)
    ids, matrix, _meta = load_embeddings(report["path"])
    assets.text_dim = int(matrix.shape[1])
    assets.text_table = ray.put(aligned_text_table(index, ids, matrix))
    if cfg.model.bert_trainable_layers > 0:
        item_ids, texts = read_item_texts(cfg.data.items)
        by_row = [""] * len(index)
        for row, text in zip(index.lookup(item_ids), texts, strict=True):
            if row >= 2:
                by_row[row] = text
        input_ids, mask = tokenize_texts(cfg.embed.model, by_row, cfg.embed.max_length)
        assets.item_tokens = ray.put((input_ids, mask))
        bert = load_bert(cfg.embed.model)
        assets.extra_json[BERT_CONFIG_FILE] = bert.config.to_dict()
    return assets


def build_model_from_assets(cfg: ExperimentConfig, assets: ModelAssets) -> CTRModel:
    """A fresh model (pretrained BERT weights when fine-tuning) on CPU."""
    num_items = len(ItemIndex.from_bytes(assets.index_bytes))
    table = _resolve(assets.text_table)
    bert, tokens = None, None
    if cfg.model.text and cfg.model.bert_trainable_layers > 0:
        bert = load_bert(cfg.embed.model)
        input_ids, mask = _resolve(assets.item_tokens)
        tokens = (torch.from_numpy(np.array(input_ids)), torch.from_numpy(np.array(mask)))
    return CTRModel(
        cfg.model,
        num_items=num_items,
        text_dim=assets.text_dim,
        text_table=torch.from_numpy(np.array(table, dtype=np.float32)) if table is not None else None,
        bert=bert,
        item_tokens=tokens,
        side_layout=SideLayout.from_config(cfg.data.features),
        side_tables=_resolve(assets.side_tables),
        side_stats=assets.side_stats,
    )


def warm_start_state(checkpoint_dir: str, model: CTRModel, index: ItemIndex) -> dict[str, torch.Tensor]:
    """Weights of a parent checkpoint for a model over an extended index.

    Known items keep their rows (the index was extended, never reordered); hashed id buckets are
    shared; text tables and token buffers come from the new item table, so they are not copied.
    Tensors whose shape changed (e.g. a different model size) are skipped.
    """
    parent = read_checkpoint(checkpoint_dir)
    own = model.state_dict()
    state = {}
    for key, tensor in parent.model_state.items():
        if key.rsplit(".", 1)[-1] in DATA_STATISTICS:
            continue  # the new build's statistics, not the parent's
        if key in own and own[key].shape == tensor.shape:
            state[key] = tensor
    return state
