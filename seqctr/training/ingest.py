"""Ray Data ingest: sample splits (string ids) -> fixed-shape integer tensors the model reads.

Samples keep raw item ids so they never depend on one item index; the index of the run (or of the
checkpoint being evaluated) is applied here, in a Ray Data actor pool that loads it once, so the
encoding runs beside training instead of inside the training step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray

from seqctr.platform.config import ExperimentConfig, ModelConfig
from seqctr.platform.model.features import HASH_H64, MODEL_INPUTS, ItemIndex, encode_samples, hash_buckets
from seqctr.platform.model.side import SIDE_INPUTS, SideLayout, encode_side

USER_HASH_BUCKETS = 2**61  # groups users for GAUC; collisions are negligible at this size
# Users only group rows within one evaluation (never stored with a model), so they take the
# vectorised hash: no Python call per row of every batch.
USER_HASH_SCHEME = HASH_H64
MODEL_COLUMNS = (*MODEL_INPUTS, *SIDE_INPUTS, "label", "user")
Side = tuple[SideLayout, ModelConfig]  # what encode_side needs: the layout and the bucket counts


def side_of(cfg: ExperimentConfig) -> Side | None:
    """The side-feature encoding of a config (None when data.features uses none per sample)."""
    layout = SideLayout.from_config(cfg.data.features)
    return (layout, cfg.model) if layout.per_sample else None


def encode_table(
    batch: pa.Table, index: ItemIndex, num_buckets: int, max_seq_len: int, side: Side | None = None
) -> dict[str, np.ndarray]:
    """Model tensors (with the side inputs of `side`) plus the columns evaluation needs: a user hash
    (for GAUC) and p_true if present."""
    out = encode_samples(batch, index, num_buckets, max_seq_len)
    if side is not None:
        out.update(encode_side(batch, *side))
    out["user"] = hash_buckets(batch.column("user_id"), USER_HASH_BUCKETS, USER_HASH_SCHEME)
    if "p_true" in batch.column_names:
        out["p_true"] = batch.column("p_true").to_numpy(zero_copy_only=False).astype(np.float64)
    return out


class EncodeSamples:
    """Ray Data callable class: the item index is deserialised once per actor (its lookup table is
    built on the first batch and reused by every later one)."""

    def __init__(self, index_data: str | bytes, num_buckets: int, max_seq_len: int, side: Side | None = None) -> None:
        self.index = ItemIndex.from_bytes(index_data)  # the Parquet bytes of the index (or JSON text)
        self.num_buckets = num_buckets
        self.max_seq_len = max_seq_len
        self.side = side

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        return encode_table(batch, self.index, self.num_buckets, self.max_seq_len, self.side)


def encode_dataset(
    ds: ray.data.Dataset,
    index_data: str | bytes,
    num_buckets: int,
    max_seq_len: int,
    concurrency: int = 1,
    side: Side | None = None,
) -> ray.data.Dataset:
    """Map a samples dataset to model tensors (see MODEL_COLUMNS) with an actor pool."""
    return ds.map_batches(
        EncodeSamples,
        fn_constructor_kwargs={
            "index_data": index_data,
            "num_buckets": num_buckets,
            "max_seq_len": max_seq_len,
            "side": side,
        },
        batch_format="pyarrow",
        batch_size=4096,
        concurrency=concurrency,
        num_cpus=0.5,
    )


def to_model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The subset of a batch that the model's forward reads."""
    return {k: batch[k] for k in (*MODEL_INPUTS, *SIDE_INPUTS) if k in batch}
