"""The CTR model: BERT item embeddings + an LSTM over the user's history -> one click logit.

Reads top to bottom: item vectors, sequence encoder, target-aware attention, head, then the model
that assembles them. Shapes: B batch, L history length, C candidates, D item vector size
(`embed_dim`), H hidden size, Dt text-embedding size, T tokens per item text.

Index conventions (from the feature encoder): item index 0 = padding, 1 = unknown item, 2.. known
items; id bucket 0 = padding; click age bucket 0 = padding, 1 = unknown age, 2.. log2 seconds.
Histories are right-padded; `hist_len` (may be 0) says how many positions are real. Padding never
changes a result: RNNs are causal and read right-padded histories, and every pool is masked. The
loss lives in training; the model returns logits.

    model = build_model(cfg.model, num_items, text_table)
    logits = model(batch)                                   # (B,)
    logits = model.score_groups(hist_idx, hist_bucket, hist_len, cand_idx, cand_bucket, group)  # (N,) serving batch
    logits = model.score_candidates(hist_idx, hist_bucket, hist_len, cand_idx, cand_bucket, hist_age=...)  # (C,)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from seqctr.platform.config import ModelConfig
from seqctr.platform.model.features import AGE_BUCKETS
from seqctr.platform.model.side import SIDE_INPUTS, ItemSide, SampleSide, SideLayout, WideTerms

PAD, UNKNOWN = 0, 1
FROZEN_CACHE_BYTES = 1 << 30  # fine-tuning: cache the frozen BERT layers' output when it fits in this


def clamp_item_index(idx: Tensor, num_items: int) -> Tensor:
    """Indices outside [0, num_items) become 1 (unknown): an index that grew never reads out of range."""
    return torch.where((idx < 0) | (idx >= num_items), torch.full_like(idx, UNKNOWN), idx)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of the valid positions; rows without any valid position give zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)


def mlp(in_dim: int, hidden: list[int], dropout: float, out_dim: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- item vectors


class ItemEmbedding(nn.Module):
    """Item vector = id embedding of the hashed bucket + a projection of the item's text embedding.

    The text embedding comes from a frozen table (`text_table`, precomputed by `seqctr embed`) or, when
    fine-tuning, from BERT run on only the unique items of the batch.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_items: int,
        text_dim: int,
        text_table: Tensor | None = None,
        bert: nn.Module | None = None,
        item_tokens: tuple[Tensor, Tensor] | None = None,
        side: ItemSide | None = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.side = side  # item-table columns (data.features.item), added to every item vector
        self.text_dim = text_dim if cfg.text else 0
        self.item_dropout = cfg.item_dropout
        self.text_dropout = cfg.text_dropout
        self.id_embedding = nn.Embedding(cfg.id_buckets, cfg.embed_dim, padding_idx=PAD)
        nn.init.normal_(self.id_embedding.weight, std=0.1)
        with torch.no_grad():
            self.id_embedding.weight[PAD].zero_()
        self.bert: nn.Module | None = None
        self.text_proj: nn.Linear | None = None
        self.frozen_cache_bytes = FROZEN_CACHE_BYTES
        if not cfg.text:
            return
        self.text_proj = nn.Linear(text_dim, cfg.embed_dim)
        if cfg.bert_trainable_layers > 0:
            self._init_bert(cfg.bert_trainable_layers, num_items, text_dim, bert, item_tokens)
        else:
            # No table given: zeros, to be filled by load_state_dict from a checkpoint.
            table = _padded_rows(text_table, num_items, text_dim, "text_table", torch.float32)
            table[: UNKNOWN + 1] = 0  # padding and unknown rows carry no text
            self.register_buffer("text_table", table)  # (num_items, Dt)

    def _init_bert(
        self,
        trainable_layers: int,
        num_items: int,
        text_dim: int,
        bert: nn.Module | None,
        item_tokens: tuple[Tensor, Tensor] | None,
    ) -> None:
        if bert is None or item_tokens is None:
            raise ValueError("model.bert_trainable_layers > 0 needs `bert` and `item_tokens` (fine-tune mode)")
        hidden = bert.config.hidden_size
        if hidden != text_dim:
            raise ValueError(f"text_dim={text_dim} but the BERT hidden_size is {hidden}; they must match")
        layers = bert.encoder.layer
        if trainable_layers > len(layers):
            raise ValueError(
                f"model.bert_trainable_layers={trainable_layers} but the BERT model has {len(layers)} layers"
            )
        self.trainable_layers = trainable_layers
        self._frozen_cache: Tensor | None = None
        for p in bert.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - trainable_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.bert = bert
        input_ids, attention_mask = item_tokens
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"item_tokens: input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (num_items, T)"
            )
        T = input_ids.shape[1]
        ids = _padded_rows(input_ids, num_items, T, "item_tokens.input_ids", torch.long)
        mask = _padded_rows(attention_mask, num_items, T, "item_tokens.attention_mask", torch.long)
        self.register_buffer("item_input_ids", ids)  # (num_items, T)
        self.register_buffer("item_attention_mask", mask)  # (num_items, T)

    def text_of(self, indices: list[Tensor]) -> list[Tensor]:
        """Text embeddings (..., Dt) for several index tensors; in fine-tune mode one BERT pass over
        the unique items of all of them together (padding, unknown and empty texts give zeros)."""
        if self.bert is None:
            return [self.text_table[i] for i in indices]
        flat = torch.cat([i.reshape(-1) for i in indices])  # (N,)
        uniq, inverse = torch.unique(flat, return_inverse=True)  # (U,), (N,)
        run = (uniq > UNKNOWN) & (self.item_attention_mask[uniq].sum(1) > 0)  # (U,)
        table = torch.zeros(len(uniq), self.text_dim, device=flat.device)  # (U, Dt)
        if bool(run.any()):
            table[run] = self._bert_pool(uniq[run]).to(table.dtype)
        vectors = table[inverse]  # (N, Dt)
        out, start = [], 0
        for i in indices:
            out.append(vectors[start : start + i.numel()].view(*i.shape, self.text_dim))
            start += i.numel()
        return out

    def _bert_pool(self, rows: Tensor) -> Tensor:
        """Mean-pooled BERT output (U, Dt) of item rows: the trainable top layers over the cached output
        of the frozen ones when the cache fits, else the whole encoder."""
        mask = self.item_attention_mask[rows]  # (U, T)
        width = int(mask.sum(1).max())  # tokens are right-padded: drop all-padding columns
        mask = mask[:, :width]
        frozen = self._frozen_hidden()
        if frozen is None:
            hidden = self.bert(input_ids=self.item_input_ids[rows, :width], attention_mask=mask).last_hidden_state
        else:
            hidden = self._top_layers(frozen[rows, :width], mask)  # (U, T, Dt)
        return masked_mean(hidden, mask.bool())  # (U, Dt)

    def _frozen_hidden(self) -> Tensor | None:
        """Output of the frozen part of BERT (embeddings + bottom layers) for every item, computed once.

        The frozen part gives the same output every step, so running it per batch (5 of MiniLM's 6
        layers when one is trained) is wasted work. Computed without dropout, in fp32, in chunks; kept
        out of the state dict; None (run everything per step) when it would exceed `frozen_cache_bytes`.
        """
        ids, mask = self.item_input_ids, self.item_attention_mask
        cached = self._frozen_cache
        if cached is not None and cached.device == ids.device:
            return cached  # the per-step path: nothing else is computed here
        width = max(int(mask.sum(1).max()), 1)
        if ids.shape[0] * width * self.text_dim * 4 > self.frozen_cache_bytes:
            return None
        frozen_layers = len(self.bert.encoder.layer) - self.trainable_layers
        was_training = self.bert.training
        self.bert.eval()
        chunks = []
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            for start in range(0, ids.shape[0], 1024):
                out = self.bert(
                    input_ids=ids[start : start + 1024, :width],
                    attention_mask=mask[start : start + 1024, :width],
                    output_hidden_states=True,
                )
                chunks.append(out.hidden_states[frozen_layers].float())  # (chunk, T, Dt)
        self.bert.train(was_training)
        self._frozen_cache = torch.cat(chunks)  # (num_items, T, Dt)
        return self._frozen_cache

    def _top_layers(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """The trainable top BERT layers over cached frozen outputs (U, T, Dt); attention masked as BertModel does."""
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.bert.encoder.layer[len(self.bert.encoder.layer) - self.trainable_layers :]:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._frozen_cache = None  # new weights: the frozen output is recomputed on first use
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, idx: Tensor, bucket: Tensor, text: Tensor | None) -> Tensor:
        vec = self.id_embedding(bucket)  # (..., D)
        if self.text_proj is not None and text is not None:
            projected = self.text_proj(text)
            if self.text_dropout > 0 and self.training:  # model.text_dropout: whole text parts, not rescaled
                keep = torch.rand(bucket.shape, device=vec.device) >= self.text_dropout
                projected = projected * keep.unsqueeze(-1).to(projected.dtype)
            vec = vec + projected
        if self.side is not None:
            vec = vec + self.side(clamp_item_index(idx, self.num_items))
        if self.item_dropout > 0 and self.training:  # model.item_dropout; 0 = no call, no random draw
            vec = nn.functional.dropout(vec, self.item_dropout, training=True)
        return vec * (idx != PAD).unsqueeze(-1).to(vec.dtype)  # padding -> exactly zero


def _padded_rows(table: Tensor | None, rows: int, cols: int, name: str, dtype: torch.dtype) -> Tensor:
    """`table` grown to `rows` rows with zeros (the item index may have grown since it was built)."""
    out = torch.zeros(rows, cols, dtype=dtype)
    if table is None:
        return out
    if table.dim() != 2 or table.shape[1] != cols or table.shape[0] > rows:
        raise ValueError(f"{name}: shape {tuple(table.shape)} does not fit ({rows} items, {cols} columns)")
    out[: table.shape[0]] = table
    return out


# ----------------------------------------------------------------------------- sequence encoder


class HistoryState(NamedTuple):
    outputs: Tensor  # (B, L, H) per-position outputs, zero at padding
    last: Tensor  # (B, H) final state, zero for an empty history
    mask: Tensor  # (B, L) bool, True at real positions


class SequenceEncoder(nn.Module):
    """'lstm' / 'gru' over right-padded sequences, or 'mean' = masked mean of projected item vectors."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.sequence
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        if self.kind == "mean":
            self.proj = nn.Linear(cfg.embed_dim, cfg.hidden_size)
        else:
            rnn = nn.LSTM if self.kind == "lstm" else nn.GRU
            self.rnn = rnn(cfg.embed_dim, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> HistoryState:
        B, L, _ = x.shape  # (B, L, D)
        mask = torch.arange(L, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
        if self.kind == "mean":
            outputs = self.proj(x) * mask.unsqueeze(-1).to(x.dtype)  # (B, L, H)
            return HistoryState(outputs, masked_mean(outputs, mask), mask)
        # Histories are right-padded and the RNN is causal, so outputs before each row's length never
        # see its padding: the state at position length-1 is exactly what a packed run would return.
        # (Packed sequences give the same numbers but their CPU backward zero-fills the whole packed
        # buffer once per time step, which made training several times slower.)
        out, _ = self.rnn(x)  # (B, L, H)
        outputs = out * mask.unsqueeze(-1).to(out.dtype)
        rows = torch.arange(B, device=x.device)
        last = outputs[rows, (lengths - 1).clamp(min=0)]  # (B, H); zero for an empty history (masked)
        return HistoryState(outputs, last, mask)


# ----------------------------------------------------------------------------- attention


class TargetAttention(nn.Module):
    """DIN-style attention: an MLP scores [h, t, h-t, h*t] per position; softmax over real positions."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, outputs: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        t = target.unsqueeze(1).expand_as(outputs)  # (B, L, H)
        scores = self.score(torch.cat([outputs, t, outputs - t, outputs * t], dim=-1)).squeeze(-1)  # (B, L)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # Masked positions get exp(min - max) = 0; an all-padding row is uniform, then zeroed by the mask.
        weights = torch.softmax(scores, dim=-1) * mask.to(scores.dtype)  # (B, L)
        return torch.einsum("bl,blh->bh", weights, outputs), weights  # (B, H), (B, L)


# ----------------------------------------------------------------------------- the model


class CTRModel(nn.Module):
    """Item vectors -> sequence encoder -> [last, pool, target, last*target, side] -> MLP -> logit.

    `side_layout` (data.features) adds the side inputs (side.py): item-table columns in every item
    vector, and per-sample user/context/count features beside the history in the head's input.
    `side_tables` are the item-aligned tables, `side_stats` the train split's statistics; a model
    rebuilt from a checkpoint gets both from its state dict.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_items: int,
        text_dim: int,
        text_table: Tensor | None = None,
        bert: nn.Module | None = None,
        item_tokens: tuple[Tensor, Tensor] | None = None,
        side_layout: SideLayout | None = None,
        side_tables: dict[str, np.ndarray] | None = None,
        side_stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Range checks of the inputs cost one device->host sync per forward; training turns them off
        # (its ingest builds in-range inputs by construction), serving and evaluation keep them on.
        self.check_ranges = True
        if num_items < 2:
            raise ValueError(f"num_items={num_items}: the item index has at least rows 0 (padding) and 1")
        if cfg.bert_trainable_layers > 0 and not cfg.text:
            raise ValueError("model.bert_trainable_layers > 0 needs model.text=true")
        if cfg.text and text_dim < 1:
            raise ValueError(f"model.text=true needs text_dim >= 1, got {text_dim}")
        self.cfg = cfg
        self.num_items = num_items
        self.text_dim = text_dim if cfg.text else 0
        H = cfg.hidden_size
        layout = side_layout or SideLayout()
        self.side_layout = layout
        item_side = None
        if layout.item_cat or layout.item_num:
            item_side = ItemSide(cfg, layout, num_items, side_tables or {})
        self.items = ItemEmbedding(cfg, num_items, text_dim, text_table, bert, item_tokens, item_side)
        self.sample_side: SampleSide | None = None
        side_width = 0
        if layout.per_sample:
            self.sample_side = SampleSide(cfg, layout, num_items, side_tables or {}, side_stats)
            side_width = self.sample_side.sample_width + self.sample_side.target_width
        self.wide: WideTerms | None = None
        if cfg.wide and (layout.per_sample or layout.item_cat):
            self.wide = WideTerms(cfg, layout)
        # model.history_match: per item categorical column, [log1p(matches), matches / history length].
        self.match_width = 2 * len(layout.item_cat) if cfg.history_match and item_side is not None else 0
        self.match_wide: nn.Linear | None = None
        if self.match_width and self.wide is not None:
            self.match_wide = nn.Linear(self.match_width, 1, bias=False)
            nn.init.zeros_(self.match_wide.weight)  # starts as the wide part's other terms: adding nothing
        # The age of a click tells whether it belongs to the current session, whose intent it reveals.
        self.age_embedding: nn.Embedding | None = None
        if cfg.time_features:
            self.age_embedding = nn.Embedding(AGE_BUCKETS, cfg.embed_dim, padding_idx=PAD)
            nn.init.normal_(self.age_embedding.weight, std=0.1)
            with torch.no_grad():
                self.age_embedding.weight[PAD].zero_()
        self.encoder = SequenceEncoder(cfg)
        self.target_proj = nn.Linear(cfg.embed_dim, H)
        self.attention = TargetAttention(H) if cfg.attention else None
        self.head = mlp(4 * H + side_width + self.match_width, cfg.mlp_hidden, cfg.dropout)

    # -- inputs

    def _checked(
        self,
        hist_idx: Tensor,
        hist_bucket: Tensor,
        hist_len: Tensor,
        tgt_bucket: Tensor,
        hist_age: Tensor | None,
        group: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Shape checks, then one device sync for all range checks (skipped when `check_ranges` is off);
        errors name the input key.
        Returns the history (idx, bucket, age), given one padding column when it has none (L = 0);
        a missing `hist_age` means every real position's age is unknown."""
        if hist_idx.dim() != 2 or hist_bucket.shape != hist_idx.shape:
            raise ValueError(
                f"hist_idx {tuple(hist_idx.shape)} and hist_bucket {tuple(hist_bucket.shape)} must be (B, L)"
            )
        if hist_age is None:
            hist_age = (hist_idx != PAD).long() * UNKNOWN
        elif hist_age.shape != hist_idx.shape:
            raise ValueError(f"hist_age {tuple(hist_age.shape)} must match hist_idx {tuple(hist_idx.shape)}")
        n, L = self.cfg.id_buckets, hist_idx.shape[1]
        if L == 0:
            hist_idx = hist_bucket = hist_age = hist_idx.new_zeros(hist_idx.shape[0], 1)
        if hist_len.shape != hist_idx.shape[:1]:
            raise ValueError(f"hist_len {tuple(hist_len.shape)} must be (B,) with B={hist_idx.shape[0]}")
        B = hist_idx.shape[0]
        if not self.check_ranges:
            return hist_idx, hist_bucket, hist_age
        if group is None:
            group = hist_len.new_zeros(0)
        bad = torch.stack(
            [
                ((hist_bucket < 0) | (hist_bucket >= n)).any(),
                ((tgt_bucket < 0) | (tgt_bucket >= n)).any(),
                ((hist_len < 0) | (hist_len > L)).any(),
                ((hist_age < 0) | (hist_age >= AGE_BUCKETS)).any(),
                ((group < 0) | (group >= B)).any(),
            ]
        ).tolist()
        names = [
            f"hist_bucket outside [0, {n})",
            f"target_bucket outside [0, {n})",
            f"hist_len outside [0, {L}]",
            f"hist_age outside [0, {AGE_BUCKETS})",
            f"group outside [0, {B}) (B = histories)",
        ]
        for is_bad, name in zip(bad, names, strict=True):
            if is_bad:
                raise ValueError(f"model input {name} (model.id_buckets={n}, history length L={L})")
        return hist_idx, hist_bucket, hist_age

    def _target_text(
        self, target_idx: Tensor, target_text: Tensor | None, target_text_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(indices to look text up for, override mask). Overridden rows skip the lookup (index 0)."""
        if target_text is None or self.text_dim == 0:
            return target_idx, None
        if target_text.shape != (target_idx.shape[0], self.text_dim):
            raise ValueError(
                f"target_text {tuple(target_text.shape)} must be (B, Dt) = ({target_idx.shape[0]}, {self.text_dim})"
            )
        if target_text_mask is None:
            target_text_mask = torch.ones_like(target_idx, dtype=torch.bool)
        elif target_text_mask.shape != target_idx.shape:
            raise ValueError(
                f"target_text_mask {tuple(target_text_mask.shape)} must be (B,) with B={target_idx.shape[0]}"
            )
        return target_idx.masked_fill(target_text_mask, PAD), target_text_mask.bool()

    def _embed(
        self,
        hist_idx: Tensor | None,
        hist_bucket: Tensor | None,
        target_idx: Tensor,
        target_bucket: Tensor,
        target_text: Tensor | None = None,
        target_text_mask: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor]:
        """Item vectors of the history (B, L, D) (None without one) and the targets (C, D); in fine-tune
        mode one BERT pass covers the unique items of both."""
        # A target is never padding: index 0 there is treated as unknown.
        target_idx = clamp_item_index(target_idx, self.num_items).masked_fill(target_idx == PAD, UNKNOWN)
        lookup_idx, override = self._target_text(target_idx, target_text, target_text_mask)
        wanted = [lookup_idx]
        if hist_idx is not None:
            hist_idx = clamp_item_index(hist_idx, self.num_items)
            wanted.append(hist_idx)
        hist_text = tgt_text = None
        if self.text_dim:
            tgt_text, *rest = self.items.text_of(wanted)  # (C, Dt), [(B, L, Dt)]
            hist_text = rest[0] if rest else None
            if override is not None:
                tgt_text = torch.where(override.unsqueeze(-1), target_text.to(tgt_text.dtype), tgt_text)
        hist_vec = None if hist_idx is None else self.items(hist_idx, hist_bucket, hist_text)  # (B, L, D)
        return hist_vec, self.items(target_idx, target_bucket, tgt_text)  # (C, D)

    # -- scoring

    def encode_history(
        self, hist_idx: Tensor, hist_bucket: Tensor, hist_len: Tensor, hist_age: Tensor | None = None
    ) -> HistoryState:
        """Run the sequence encoder once; serving reuses the state for every candidate."""
        hist_idx, hist_bucket, hist_age = self._checked(
            hist_idx, hist_bucket, hist_len, hist_bucket.new_zeros(0), hist_age
        )
        return self._encode_history(hist_idx, hist_bucket, hist_len, hist_age)

    def _encode_history(
        self, hist_idx: Tensor, hist_bucket: Tensor, hist_len: Tensor, hist_age: Tensor
    ) -> HistoryState:
        hist_vec, _ = self._embed(hist_idx, hist_bucket, hist_idx.new_ones(0), hist_idx.new_ones(0))
        return self.encoder(self._with_age(hist_vec, hist_age), hist_len)  # (B, L, H), (B, H), (B, L)

    def _with_age(self, hist_vec: Tensor, hist_age: Tensor) -> Tensor:
        """History vectors plus their click-age embedding (padding's age row is zero)."""
        if self.age_embedding is None:
            return hist_vec
        return hist_vec + self.age_embedding(hist_age).to(hist_vec.dtype)  # (B, L, D)

    def _side_vectors(
        self, side: dict[str, Tensor] | None, rows: int, target_idx: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """(per history row (B, S), per target (N, St)) side vectors; (None, None) without side inputs."""
        if self.sample_side is None:
            return None, None
        side = side or {}
        target_idx = clamp_item_index(target_idx, self.num_items)
        per_row = self.sample_side.per_sample(side, rows, target_idx.device)
        return per_row, self.sample_side.per_target(side, target_idx)

    def _history_match(self, hist_idx: Tensor, mask: Tensor, target_idx: Tensor, group: Tensor | None) -> Tensor | None:
        """(N, 2 Fi) per item categorical column: log1p of the number of history items whose value equals
        the target's, and that number over the history's length (model.history_match); None when off.
        Why: a user's affinity to the target's category is what a target x history cross gives a linear
        model, and short histories leave an RNN too few examples to learn it from vectors alone. A null
        value (code 0) matches nothing."""
        if not self.match_width or self.items.side is None:
            return None
        table = self.items.side.item_side_cat  # (items, Fi)
        hist_cat = table[clamp_item_index(hist_idx, self.num_items)]  # (B, L, Fi)
        target_cat = table[clamp_item_index(target_idx, self.num_items)]  # (N, Fi)
        if group is not None:
            hist_cat, mask = hist_cat[group], mask[group]  # (N, L, Fi), (N, L)
        same = (hist_cat == target_cat.unsqueeze(1)) & mask.unsqueeze(-1) & (target_cat != 0).unsqueeze(1)
        count = same.sum(1).float()  # (N, Fi)
        length = mask.sum(1, keepdim=True).clamp(min=1).float()  # (N, 1)
        return torch.cat([torch.log1p(count), count / length], dim=-1)  # (N, 2 Fi)

    def _wide_logit(
        self,
        side: dict[str, Tensor] | None,
        target_idx: Tensor,
        target_bucket: Tensor,
        group: Tensor | None,
        row_side: Tensor | None,
        target_side: Tensor | None,
        match: Tensor | None = None,
    ) -> Tensor | None:
        """(N,) the wide part's logit (model.wide with data.features), or None. The count features are
        read from the side vectors (`_side_vectors`), not computed again: the user's are the last three
        columns of `row_side`, the target's are `target_side`."""
        if self.wide is None:
            return None
        target_idx = clamp_item_index(target_idx, self.num_items)
        item_side = self.items.side
        item_cat = item_side.item_side_cat[target_idx] if item_side is not None and item_side.n_cat else None
        row_counts = row_side[..., -3:] if self.side_layout.counts and row_side is not None else None
        out = self.wide(side or {}, target_bucket, item_cat, row_counts, target_side, group)
        if self.match_wide is not None and match is not None:
            out = out + self.match_wide(match.float()).squeeze(-1)
        return out

    def _score(
        self,
        history: HistoryState,
        target_vec: Tensor,
        group: Tensor | None = None,
        row_side: Tensor | None = None,
        target_side: Tensor | None = None,
        match: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Logits (N,) and history weights (N, L) of N targets, target n against history row group[n]
        (None: row n). Without attention the pool is computed once per history, not per target.
        `row_side` (B, S) and `target_side` (N, St): the side vectors, and `match` (N, M) the history-match
        features (`_history_match`), joined to the head's input."""

        def per_target(x: Tensor) -> Tensor:
            return x if group is None else x[group]

        t = self.target_proj(target_vec)  # (N, H)
        last = per_target(history.last)  # (N, H)
        if self.attention is not None:
            pool, weights = self.attention(per_target(history.outputs), t, per_target(history.mask))  # (N, H), (N, L)
        else:
            m = history.mask.to(t.dtype)
            weights = per_target(m / m.sum(1, keepdim=True).clamp(min=1.0))  # (N, L) the mean's weights
            pool = per_target(masked_mean(history.outputs, history.mask))  # (N, H)
        parts = [last, pool, t, last * t]  # 4 x (N, H)
        if row_side is not None:
            parts.append(per_target(row_side).to(t.dtype))  # (N, S)
        if target_side is not None:
            parts.append(target_side.to(t.dtype))  # (N, St)
        if match is not None:
            parts.append(match.to(t.dtype))  # (N, M)
        features = torch.cat(parts, dim=-1)  # (N, 4H + S + St + M)
        return self.head(features).squeeze(-1), weights  # (N,), (N, L)

    def forward(self, batch: dict[str, Tensor], return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B,) for a batch of (history, target); with `return_attention` also weights (B, L)."""
        missing = [k for k in ("hist_idx", "hist_bucket", "hist_len", "target_idx", "target_bucket") if k not in batch]
        if missing:
            raise ValueError(f"model batch is missing keys {missing}")
        hist_idx, hist_bucket, hist_len = batch["hist_idx"], batch["hist_bucket"], batch["hist_len"]
        hist_idx, hist_bucket, hist_age = self._checked(
            hist_idx, hist_bucket, hist_len, batch["target_bucket"], batch.get("hist_age")
        )
        if batch["target_idx"].shape != hist_len.shape or batch["target_bucket"].shape != hist_len.shape:
            raise ValueError(f"target_idx and target_bucket must be (B,) with B={hist_len.shape[0]}")
        hist_vec, tgt_vec = self._embed(
            hist_idx,
            hist_bucket,
            batch["target_idx"],
            batch["target_bucket"],
            batch.get("target_text"),
            batch.get("target_text_mask"),
        )
        side = {k: batch[k] for k in SIDE_INPUTS if k in batch}
        row_side, target_side = self._side_vectors(side, hist_len.shape[0], batch["target_idx"])
        history = self.encoder(self._with_age(hist_vec, hist_age), hist_len)
        match = self._history_match(hist_idx, history.mask, batch["target_idx"], None)
        logits, weights = self._score(history, tgt_vec, None, row_side, target_side, match)
        wide = self._wide_logit(side, batch["target_idx"], batch["target_bucket"], None, row_side, target_side, match)
        if wide is not None:
            logits = logits + wide.to(logits.dtype)
        return (logits, weights) if return_attention else logits

    def score_groups(
        self,
        hist_idx: Tensor,
        hist_bucket: Tensor,
        hist_len: Tensor,
        target_idx: Tensor,
        target_bucket: Tensor,
        group: Tensor,
        target_text: Tensor | None = None,
        target_text_mask: Tensor | None = None,
        hist_age: Tensor | None = None,
        return_attention: bool = False,
        side: dict[str, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (N,) of N candidates over B histories (B, L) at once (a serving batch): candidate n
        is scored against history row `group[n]`. Each history is encoded (and, without attention,
        pooled) once, and one head pass covers all N; equals forward() on the expanded batch. With
        `return_attention` also the weights (N, L). `side`: per-row inputs (B, ...) and, optionally,
        `target_counts` (N, 2); absent ones read as missing (side.py)."""
        if target_idx.dim() != 1 or target_bucket.shape != target_idx.shape or group.shape != target_idx.shape:
            raise ValueError(
                f"target_idx {tuple(target_idx.shape)}, target_bucket {tuple(target_bucket.shape)} and "
                f"group {tuple(group.shape)} must all be (N,)"
            )
        hist_idx, hist_bucket, hist_age = self._checked(hist_idx, hist_bucket, hist_len, target_bucket, hist_age, group)
        history = self._encode_history(hist_idx, hist_bucket, hist_len, hist_age)  # (B, L, H), (B, H), (B, L)
        _, tgt_vec = self._embed(None, None, target_idx, target_bucket, target_text, target_text_mask)  # (N, D)
        row_side, target_side = self._side_vectors(side, hist_idx.shape[0], target_idx)
        match = self._history_match(hist_idx, history.mask, target_idx, group)
        logits, weights = self._score(history, tgt_vec, group, row_side, target_side, match)  # (N,), (N, L)
        wide = self._wide_logit(side, target_idx, target_bucket, group, row_side, target_side, match)
        if wide is not None:
            logits = logits + wide.to(logits.dtype)
        return (logits, weights) if return_attention else logits

    def score_candidates(
        self,
        hist_idx: Tensor,
        hist_bucket: Tensor,
        hist_len: Tensor,
        target_idx: Tensor,
        target_bucket: Tensor,
        target_text: Tensor | None = None,
        target_text_mask: Tensor | None = None,
        hist_age: Tensor | None = None,
        side: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Logits (C,) of C candidates for one user's history (1, L): `score_groups` with one group."""
        if hist_idx.dim() != 2 or hist_idx.shape[0] != 1:
            raise ValueError(f"score_candidates takes one user's history (1, L), got {tuple(hist_idx.shape)}")
        group = torch.zeros_like(target_idx)  # (C,) every candidate against row 0
        return self.score_groups(
            hist_idx,
            hist_bucket,
            hist_len,
            target_idx,
            target_bucket,
            group,
            target_text,
            target_text_mask,
            hist_age,
            side=side,
        )

    # -- optimisation

    def id_embeddings(self) -> list[nn.Embedding]:
        """The id-embedding tables (item-id buckets, item side-feature values, user ids, context values):
        the parameters train.embedding_weight_decay regularises apart from the rest."""
        side = self.items.side
        tables = [self.items.id_embedding, getattr(side, "cat_embedding", None)]
        if self.sample_side is not None:
            tables += [self.sample_side.user, self.sample_side.ctx]
        if self.wide is not None:
            tables += [self.wide.item, self.wide.user, self.wide.ctx, self.wide.cross]
        return [t for t in tables if t is not None]

    def param_groups(
        self, lr: float, bert_lr: float, weight_decay: float, embedding_weight_decay: float | None = None
    ) -> list[dict]:
        """Optimizer groups: the CTR model at `lr`; trainable BERT layers (fine-tune mode) at `bert_lr`.

        With `embedding_weight_decay` the id-embedding tables (`id_embeddings`) leave the "model" group
        for an "embeddings" group of their own, decayed by it; None keeps one "model" group."""
        bert = self.items.bert
        bert_ids = {id(p) for p in bert.parameters()} if bert is not None else set()
        model_params = [p for p in self.parameters() if p.requires_grad and id(p) not in bert_ids]
        groups = [{"name": "model", "params": model_params, "lr": lr, "weight_decay": weight_decay}]
        if embedding_weight_decay is not None:
            table_ids = {id(t.weight) for t in self.id_embeddings()}
            groups = [
                {**groups[0], "params": [p for p in model_params if id(p) not in table_ids]},
                {
                    "name": "embeddings",
                    "params": [p for p in model_params if id(p) in table_ids],
                    "lr": lr,
                    "weight_decay": embedding_weight_decay,
                },
            ]
        if bert is not None:
            bert_params = [p for p in bert.parameters() if p.requires_grad]
            groups.append({"name": "bert", "params": bert_params, "lr": bert_lr, "weight_decay": weight_decay})
        return groups


def build_model(
    cfg: ModelConfig,
    num_items: int,
    text_table: np.ndarray | Tensor | None,
    text_dim: int | None = None,
    bert: nn.Module | None = None,
    item_tokens: tuple[Tensor, Tensor] | None = None,
    **side: Any,
) -> CTRModel:
    """A CTRModel whose text size is read from the table (frozen) or BERT (fine-tune) when not given.
    `side`: side_layout / side_tables / side_stats (see CTRModel)."""
    table = None
    if text_table is not None:
        table = torch.as_tensor(np.asarray(text_table, dtype=np.float32))
        if table.dim() != 2:
            raise ValueError(f"text_table must be (num_items, Dt), got shape {tuple(table.shape)}")
    if text_dim is None:
        if table is not None:
            text_dim = table.shape[1]
        elif bert is not None:
            text_dim = bert.config.hidden_size
        elif cfg.text:
            raise ValueError("model.text=true needs a text_table, a BERT model or an explicit text_dim")
        else:
            text_dim = 0
    return CTRModel(cfg, num_items, text_dim, text_table=table, bert=bert, item_tokens=item_tokens, **side)


__all__ = [
    "CTRModel",
    "HistoryState",
    "ItemEmbedding",
    "SequenceEncoder",
    "TargetAttention",
    "build_model",
    "clamp_item_index",
    "masked_mean",
]
