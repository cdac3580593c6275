"""Rebuild a model from a checkpoint and score encoded samples: shared by evaluation and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqctr.platform.config import ExperimentConfig
from seqctr.platform.model.checkpoint import TEXT_TABLE_KEY, CheckpointContents, read_checkpoint
from seqctr.platform.model.ctr import CTRModel
from seqctr.platform.model.features import MODEL_INPUTS, ItemIndex
from seqctr.platform.model.side import SIDE_INPUTS, SideLayout

BERT_CONFIG_FILE = "bert_config.json"


@dataclass
class LoadedModel:
    """A verified checkpoint turned back into an eval-mode model plus its feature maps."""

    model: CTRModel
    config: ExperimentConfig
    index: ItemIndex
    metrics: dict[str, Any]
    path: Path
    device: torch.device

    @torch.inference_mode()
    def predict(self, arrays: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Click probabilities for encoded samples (the output of features.encode_samples)."""
        n = len(arrays["target_idx"])
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, batch_size):
            batch = {
                k: torch.tensor(arrays[k][start : start + batch_size], device=self.device)
                for k in (*MODEL_INPUTS, *SIDE_INPUTS)
                if k in arrays  # encoded samples without hist_age: the model treats ages as unknown
            }
            out[start : start + batch_size] = torch.sigmoid(self.model(batch)).float().cpu().numpy()
        return out


def model_from_contents(contents: CheckpointContents, device: str | torch.device = "cpu") -> CTRModel:
    cfg = contents.config
    if cfg.model.time_features and "age_embedding.weight" not in contents.model_state:
        # A checkpoint from before click ages (its config.json has no `time_features` key): no age input.
        cfg = cfg.with_overrides({"model.time_features": False})
        contents.config = cfg
    index_rows = len(contents.index)
    table = next((v for k, v in contents.text_tables.items() if k.endswith(TEXT_TABLE_KEY)), None)
    bert, tokens = None, None
    if cfg.model.text and cfg.model.bert_trainable_layers > 0:
        from transformers import BertConfig, BertModel

        pooler = any(".bert.pooler." in key for key in contents.model_state)  # as the trained model had it
        bert = BertModel(BertConfig.from_dict(contents.extra_json[BERT_CONFIG_FILE]), add_pooling_layer=pooler)
        by_suffix = {k.rsplit(".", 1)[-1]: v for k, v in contents.model_state.items()}
        tokens = (by_suffix["item_input_ids"], by_suffix["item_attention_mask"])
    text_dim = int(table.shape[1]) if table is not None else 0
    if bert is not None:
        text_dim = bert.config.hidden_size  # fine-tuned: texts go through BERT, there is no table
    model = CTRModel(
        cfg.model,
        num_items=index_rows,
        text_dim=text_dim,
        text_table=table,
        bert=bert,
        item_tokens=tokens,
        side_layout=SideLayout.from_config(cfg.data.features),  # its tables and statistics: from the state
    )
    model.load_state_dict(contents.full_state())
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Verify every file's sha256, then rebuild the model; no pickle is ever loaded."""
    contents = read_checkpoint(path)
    device = torch.device(device)
    return LoadedModel(
        model=model_from_contents(contents, device),
        config=contents.config,
        index=contents.index,
        metrics=contents.metrics,
        path=Path(path),
        device=device,
    )
