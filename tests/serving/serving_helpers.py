"""Tiny checkpoints for the serving tests: a real CTRModel from configs/tiny.yaml, saved with
save_checkpoint around a small item index and a random text table (no training, no BERT download)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch

from seqctr.platform.config import CONFIGS_DIR, ExperimentConfig, load_config
from seqctr.platform.model.checkpoint import save_checkpoint
from seqctr.platform.model.ctr import build_model
from seqctr.platform.model.features import ItemIndex, encode_samples
from seqctr.platform.model.predictor import load_model

NUM_ITEMS = 40
TEXT_DIM = 32  # hidden size of the tiny random BERT ('tiny'), so cold-start vectors fit the table
ITEM_IDS = [f"i{k}" for k in range(NUM_ITEMS)]


def tiny_serving_config(*overrides: str) -> ExperimentConfig:
    """configs/tiny.yaml: the default model settings (target attention off) at a tiny size."""
    return load_config(CONFIGS_DIR / "tiny.yaml", list(overrides))


def write_checkpoint(path: Path, seed: int = 0, cfg: ExperimentConfig | None = None, attention: bool = True) -> Path:
    """A complete checkpoint of an untrained tiny model; different seeds give different scores."""
    cfg = cfg or tiny_serving_config(f"model.attention={str(attention).lower()}")
    index = ItemIndex(ITEM_IDS)
    table = np.random.default_rng(seed).normal(size=(len(index), TEXT_DIM)).astype(np.float32)
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(index), table).eval()
    return save_checkpoint(
        path, model=model, config=cfg, item_index=index.to_json(), metrics={"val_auc": 0.5 + seed / 100}
    )


def offline_scores(
    checkpoint: Path,
    history: list[str],
    candidates: list[str],
    history_ts: list[int] | None = None,
    timestamp: int | None = None,
) -> np.ndarray:
    """What the offline predictor (encode_samples + LoadedModel.predict) says for the same inputs."""
    loaded = load_model(checkpoint)
    cfg = loaded.config
    batch = {"history": [history] * len(candidates), "target": candidates}
    if history_ts is not None:
        batch |= {"history_ts": [history_ts] * len(candidates), "timestamp": [timestamp] * len(candidates)}
    arrays = encode_samples(
        batch,
        loaded.index,
        cfg.model.id_buckets,
        cfg.data.max_seq_len,
    )
    return loaded.predict(arrays)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
