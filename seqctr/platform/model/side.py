"""Side features: what a real CTR log carries beside histories and texts (data.features).

Three families, one module, so training, evaluation and serving encode them the same way:
- per sample (a history row): a hashed user-id embedding, categorical context columns (hashed
  embeddings) and numeric ones (standardised with the train split's statistics, kept as model buffers
  so a checkpoint normalises exactly as its training did), and the user's leak-free counts;
- per target: the item's leak-free counts (training: from the samples; serving: the build's
  whole-log feature table, a model buffer aligned with the item index);
- per item: item-table columns (category, brand, price, ...) added to every item vector, so history
  items carry them too (buffers aligned with the item index, built once by `item_side_tables`).

Encoding here is numpy (ingest and serving); the counts' transform (log counts, smoothed log-odds)
runs inside the model, once for every path. Unknown values never fail: categorical values hash into
buckets (null = bucket 0, a learned "missing"), numeric NaN becomes the mean, unknown items get zeros.
Nothing here grows with the catalogue per batch: item tables are indexed by row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from seqctr.platform.config import FeaturesConfig, ModelConfig
from seqctr.platform.data.counts import sorted_lookup, value_hashes
from seqctr.platform.model.features import _column, hash64

# Counting columns of the samples (written by the build, platform/data/counts.py).
USER_IMPRESSIONS = "count_user_impressions"
USER_CLICKS = "count_user_clicks"
ITEM_IMPRESSIONS = "count_item_impressions"
ITEM_CLICKS = "count_item_clicks"
COUNT_COLUMNS = (USER_IMPRESSIONS, USER_CLICKS, ITEM_IMPRESSIONS, ITEM_CLICKS)
SIDE_INPUTS = ("user_bucket", "ctx_cat", "ctx_num", "user_counts", "target_counts", "target_user_item_counts")
ITEM_TABLE_KEYS = ("item_side_cat", "item_side_num", "item_counts", "item_value_hash")  # stored like the text table

USER_SEED = 0x05E2  # salts: a user's bucket does not follow its id's item bucket, features differ
FEATURE_SEED = 0x0FEA


def user_item_count_columns(column: str) -> tuple[str, str, str]:
    """The samples' columns of the user's counts by item `column` (data.features.user_item_counts)."""
    return tuple(f"count_user_{column}_{what}" for what in ("impressions", "clicks", "recent"))  # type: ignore[return-value]


@dataclass(frozen=True)
class SideLayout:
    """Which side inputs a model reads, from `data.features` (names in config order)."""

    event_cat: tuple[str, ...] = ()
    event_num: tuple[str, ...] = ()
    item_cat: tuple[str, ...] = ()
    item_num: tuple[str, ...] = ()
    user_id: bool = False
    counts: bool = False
    count_prior: float = 20.0
    user_item: tuple[str, ...] = ()  # item columns the user's counts are also kept by
    recent: int = 10

    @classmethod
    def from_config(cls, features: FeaturesConfig) -> SideLayout:
        def names(specs: list, kind: str) -> tuple[str, ...]:
            return tuple(s.name for s in specs if s.kind == kind)

        return cls(
            event_cat=names(features.event, "categorical"),
            event_num=names(features.event, "numeric"),
            item_cat=names(features.item, "categorical"),
            item_num=names(features.item, "numeric"),
            user_id=features.user_id,
            counts=features.counts,
            count_prior=features.count_prior,
            user_item=tuple(features.user_item_counts),
            recent=features.recent_impressions,
        )

    @property
    def per_sample(self) -> bool:
        return bool(self.user_id or self.event_cat or self.event_num or self.counts)

    @property
    def target_count_width(self) -> int:
        """Width of the per-target count features: the item's (3) and 5 per user_item_counts column."""
        return (3 + 5 * len(self.user_item)) if self.counts else 0

    def without_user_item(self) -> SideLayout:
        return replace(self, user_item=())


def _arrow_string(value: Any) -> str | None:
    """A value as the build's cast to string writes it (1.0 -> "1", True -> "true"); null stays null."""
    if value is None or isinstance(value, str):
        return value
    return pc.cast(pa.scalar(value), pa.string()).as_py()


def category_buckets(values: Any, num_buckets: int, feature: int = 0) -> np.ndarray:
    """(n,) int64 buckets in [1, num_buckets) of any values (as strings); null -> 0. Vectorised."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        array = values
    else:  # Python values of any type (a request's JSON): each as Arrow casts it, as the build's columns
        array = pa.array([_arrow_string(v) for v in values], type=pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    strings = pc.cast(array, pa.string()) if array.type != pa.string() else array
    filled = pc.fill_null(strings, "")
    buckets = (hash64(filled, FEATURE_SEED + feature) % np.uint64(num_buckets - 1)).astype(np.int64) + 1
    if strings.null_count:
        buckets[pc.is_null(strings).to_numpy(zero_copy_only=False)] = 0
    return buckets


def user_buckets(user_ids: Any, num_buckets: int) -> np.ndarray:
    return category_buckets(user_ids, num_buckets, USER_SEED - FEATURE_SEED)


def _numeric(values: Any) -> np.ndarray:
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=pa.float64())
    return pc.fill_null(pc.cast(array, pa.float64()), float("nan")).to_numpy(zero_copy_only=False)


def encode_side(batch: pa.Table | dict[str, Any], layout: SideLayout, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The per-sample side arrays of a batch of samples (columns by name; see SIDE_INPUTS).

    A declared column missing from the batch is an error naming it (samples built without it)."""
    out: dict[str, np.ndarray] = {}

    def need(name: str) -> Any:
        col = _column(batch, name)
        if col is None:
            raise ValueError(f"samples lack column {name!r} (data.features); rebuild with `seqctr data build`")
        return col

    if layout.user_id:
        out["user_bucket"] = user_buckets(need("user_id"), cfg.user_buckets)
    if layout.event_cat:
        cols = [category_buckets(need(n), cfg.feature_buckets, f) for f, n in enumerate(layout.event_cat)]
        out["ctx_cat"] = np.stack(cols, axis=1)
    if layout.event_num:
        out["ctx_num"] = np.stack([_numeric(need(n)) for n in layout.event_num], axis=1).astype(np.float32)
    if layout.counts:

        def pair(a: str, b: str) -> np.ndarray:
            return np.stack([_numeric(need(a)), _numeric(need(b))], axis=1).astype(np.float32)

        out["user_counts"] = pair(USER_IMPRESSIONS, USER_CLICKS)
        out["target_counts"] = pair(ITEM_IMPRESSIONS, ITEM_CLICKS)
    if layout.user_item:
        per_column = [np.stack([_numeric(need(c)) for c in user_item_count_columns(n)], 1) for n in layout.user_item]
        out["target_user_item_counts"] = np.stack(per_column, axis=1).astype(np.float32)  # (B, F, 3)
    return out


class FeatureFieldError(ValueError):
    """A request's side field that the served model cannot read; `loc` names it (HTTP 422)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def encode_request_side(payload: dict[str, Any], layout: SideLayout, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The per-sample side arrays (one row) of a scoring request, as `encode_side` makes them for samples.

    `payload`: `user_id`, `context` (event column -> value), `user_impressions`, `user_clicks`. What is
    absent reads as missing (no user id: the padding bucket; no context value: null / NaN; no counts: a
    new user). A context key the model does not read is ignored, so one client can call variants trained
    on different features (serve.variants); a non-number for a numeric key, or more clicks than
    impressions, is an error naming the field."""
    context = payload.get("context") or {}
    row: dict[str, Any] = {}
    for name in layout.event_num:
        value = context.get(name)
        if value is not None and not isinstance(value, (int, float)):  # a bool reads as 0/1, as the build reads it
            raise FeatureFieldError(("context", name), f"context.{name} is numeric; got {value!r}")
        row[name] = [float("nan") if value is None else float(value)]
    for name in layout.event_cat:
        row[name] = [context.get(name)]
    if layout.user_id:
        row["user_id"] = [payload.get("user_id")]
    if layout.counts:
        impressions, clicks = payload.get("user_impressions"), payload.get("user_clicks")
        if clicks is not None and (impressions is None or clicks > impressions):
            raise FeatureFieldError(("user_clicks",), "user_clicks needs user_impressions >= user_clicks")
        row[USER_IMPRESSIONS], row[USER_CLICKS] = [impressions or 0], [clicks or 0]
        row[ITEM_IMPRESSIONS] = row[ITEM_CLICKS] = [0]  # placeholders: serving takes the item table's counts
    out = encode_side(row, layout.without_user_item(), cfg)  # a null user id takes bucket 0, the padding row
    out.pop("target_counts", None)
    return out


def request_user_item_counts(
    payload: dict[str, Any], layout: SideLayout, value_table: np.ndarray, cand_rows: np.ndarray, recent_rows: np.ndarray
) -> np.ndarray:
    """(C, F, 3) per candidate and user_item_counts column: the user's impressions and clicks of the
    candidate's value, from the request's `user_item_counts` ({column: {value: [impressions, clicks]}};
    an absent value = none), and how many of the request's `recent_impressions` (the last
    `layout.recent` kept) share it, as the build counts them (counts.user_value_counts).
    `value_table` (items, F) is the checkpoint's `item_value_hash`; `*_rows` are item-index rows. A
    column the model does not count by is ignored; more clicks than impressions is an error naming it."""
    given = payload.get("user_item_counts") or {}
    cand = value_table[cand_rows]  # (C, F) int64, 0 = null or unknown item
    recent = value_table[recent_rows[len(recent_rows) - layout.recent :]] if len(recent_rows) else cand[:0]
    out = np.zeros((len(cand_rows), len(layout.user_item), 3), np.float32)
    for f, name in enumerate(layout.user_item):
        by_value = given.get(name) or {}
        for value, pair in by_value.items():
            if pair[1] > pair[0]:
                raise FeatureFieldError(
                    ("user_item_counts", name, value), f"user_item_counts.{name}.{value}: clicks > impressions"
                )
        if by_value:  # O((C + V) log V): a sorted lookup, not a (candidates x values) match
            keys = value_hashes(pa.array(list(by_value), pa.string()))
            counts = np.array(list(by_value.values()), dtype=np.float64).reshape(-1, 2)
            order = np.argsort(keys, kind="stable")
            pos, hit = sorted_lookup(keys[order], cand[:, f])  # (C,)
            hit &= cand[:, f] != 0
            out[hit, f, :2] = counts[order[pos[hit]]]
        out[:, f, 2] = ((recent[None, :, f] == cand[:, f, None]) & (cand[:, f, None] != 0)).sum(1)
    return out


def item_side_tables(
    layout: SideLayout,
    cfg: ModelConfig,
    rows: np.ndarray,
    columns: dict[str, Any],
    num_items: int,
    counts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Item-index-aligned tables: `rows` (the index rows of the item table's ids, 1 = unknown) and its
    `columns`; numeric columns are standardised over the item table here (no labels involved).
    `counts`: (rows, impressions, clicks) of the build's feature table. Padding/unknown rows stay 0."""
    known = rows >= 2
    out: dict[str, np.ndarray] = {}
    if layout.item_cat:
        table = np.zeros((num_items, len(layout.item_cat)), dtype=np.int64)
        for f, name in enumerate(layout.item_cat):
            table[rows[known], f] = category_buckets(columns[name], cfg.feature_buckets, 100 + f)[known]
        out["item_side_cat"] = table
    if layout.item_num:
        table = np.zeros((num_items, len(layout.item_num)), dtype=np.float32)
        for f, name in enumerate(layout.item_num):
            values = _numeric(columns[name])[known]
            finite = np.isfinite(values)
            mean = values[finite].mean() if finite.any() else 0.0
            std = values[finite].std() if finite.sum() > 1 else 1.0
            table[rows[known], f] = np.where(finite, (values - mean) / (std if std > 1e-12 else 1.0), 0.0)
        out["item_side_num"] = table
    if layout.counts:
        table = np.zeros((num_items, 2), dtype=np.float32)
        if counts is not None:
            count_rows, impressions, clicks = counts
            ok = count_rows >= 2
            table[count_rows[ok], 0], table[count_rows[ok], 1] = impressions[ok], clicks[ok]
        out["item_counts"] = table
    if layout.user_item:
        table = np.zeros((num_items, len(layout.user_item)), dtype=np.int64)
        for f, name in enumerate(layout.user_item):
            values = columns[name]
            array = (
                values
                if isinstance(values, (pa.Array, pa.ChunkedArray))
                else pa.array([_arrow_string(v) for v in values], type=pa.string())
            )
            table[rows[known], f] = value_hashes(array)[known]
        out["item_value_hash"] = table
    return out


def count_features(counts: Tensor, prior_ctr: Tensor, prior: float) -> Tensor:
    """(…, 2) impressions, clicks -> (…, 3): log1p of each, and the smoothed log-odds of clicking."""
    impressions, clicks = counts[..., 0].clamp(min=0), counts[..., 1].clamp(min=0)
    clicks = torch.minimum(clicks, impressions)
    p = prior_ctr.clamp(1e-4, 1 - 1e-4)
    log_odds = torch.log((clicks + prior * p) / (impressions - clicks + prior * (1 - p)))
    return torch.stack([torch.log1p(impressions) / 4, torch.log1p(clicks) / 4, log_odds], dim=-1)


class ItemSide(nn.Module):
    """Item-table columns added to an item vector: a hashed embedding per categorical column and a
    linear map of the standardised numeric ones, looked up by item row."""

    def __init__(self, cfg: ModelConfig, layout: SideLayout, num_items: int, tables: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.n_cat, self.n_num = len(layout.item_cat), len(layout.item_num)
        self.buckets = cfg.feature_buckets
        if self.n_cat:
            table = tables.get("item_side_cat", np.zeros((num_items, self.n_cat), np.int64))
            self.register_buffer("item_side_cat", torch.as_tensor(table, dtype=torch.int64))
            self.cat_embedding = nn.Embedding(self.n_cat * self.buckets, cfg.embed_dim)
            nn.init.normal_(self.cat_embedding.weight, std=0.1)
            self.register_buffer("cat_offsets", torch.arange(self.n_cat) * self.buckets, persistent=False)
        if self.n_num:
            table = tables.get("item_side_num", np.zeros((num_items, self.n_num), np.float32))
            self.register_buffer("item_side_num", torch.as_tensor(table, dtype=torch.float32))
            self.num_proj = nn.Linear(self.n_num, cfg.embed_dim)

    def forward(self, idx: Tensor) -> Tensor | None:
        """(…,) item rows -> (…, D) side vector, or None without item columns."""
        vec = None
        if self.n_cat:
            vec = self.cat_embedding(self.item_side_cat[idx] + self.cat_offsets).sum(-2)
        if self.n_num:
            num = self.num_proj(self.item_side_num[idx])
            vec = num if vec is None else vec + num
        return vec


class SampleSide(nn.Module):
    """Per-sample side inputs -> one vector beside the history's: user embedding, context embeddings,
    standardised context numerics, the user's and the target item's count features."""

    def __init__(
        self,
        cfg: ModelConfig,
        layout: SideLayout,
        num_items: int,
        tables: dict[str, np.ndarray],
        stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.layout, self.prior = layout, layout.count_prior
        stats = stats or {}
        numeric = stats.get("numeric", {})
        deep_user = layout.user_id and cfg.user_embedding
        self.user = nn.Embedding(cfg.user_buckets, cfg.user_dim, padding_idx=0) if deep_user else None
        self.n_cat, self.n_num, self.buckets = len(layout.event_cat), len(layout.event_num), cfg.feature_buckets
        self.ctx = nn.Embedding(self.n_cat * self.buckets, cfg.feature_dim) if self.n_cat else None
        self.register_buffer("ctx_offsets", torch.arange(self.n_cat) * self.buckets, persistent=False)
        mean = [numeric.get(n, {}).get("mean", 0.0) for n in layout.event_num]
        std = [numeric.get(n, {}).get("std", 1.0) for n in layout.event_num]
        self.register_buffer("num_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("num_std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("prior_ctr", torch.tensor(float(stats.get("ctr", 0.1)), dtype=torch.float32))
        if layout.counts:
            table = tables.get("item_counts", np.zeros((num_items, 2), np.float32))
            self.register_buffer("item_counts", torch.as_tensor(table, dtype=torch.float32))
        if layout.user_item:  # serving finds each candidate's (and recent impression's) value here
            table = tables.get("item_value_hash", np.zeros((num_items, len(layout.user_item)), np.int64))
            self.register_buffer("item_value_hash", torch.as_tensor(table, dtype=torch.int64))
        if self.user is not None:
            # Zeros: a user the training never saw (most test users of a real log) hashes to a row no
            # gradient reached, which then reads as "no user" instead of as random noise.
            nn.init.zeros_(self.user.weight)
        if self.ctx is not None:
            nn.init.normal_(self.ctx.weight, std=0.1)
        self.sample_width = (
            (cfg.user_dim if self.user is not None else 0) + self.n_cat * cfg.feature_dim + self.n_num
        ) + (3 if layout.counts else 0)
        self.target_width = layout.target_count_width

    def per_sample(self, side: dict[str, Tensor], batch: int, device: torch.device) -> Tensor | None:
        """(B, sample_width): absent inputs (a request without context) read as missing, not as errors."""
        parts: list[Tensor] = []
        if self.user is not None:
            bucket = side.get("user_bucket")
            if bucket is None:  # no user id: the padding row (zeros), like a new user
                bucket = torch.zeros(batch, dtype=torch.long, device=device)
            parts.append(self.user(bucket))
        if self.ctx is not None:
            cat = side.get("ctx_cat")
            if cat is None:
                cat = torch.zeros(batch, self.n_cat, dtype=torch.long, device=device)
            parts.append(self.ctx(cat + self.ctx_offsets).flatten(1))
        if self.n_num:
            num = side.get("ctx_num")
            if num is None:
                num = torch.full((batch, self.n_num), float("nan"), device=device)
            z = (num.float() - self.num_mean) / self.num_std
            parts.append(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).clamp(-10, 10))
        user_counts = self.user_count_features(side, batch, device)
        if user_counts is not None:
            parts.append(user_counts)
        return torch.cat(parts, dim=-1) if parts else None

    def user_count_features(self, side: dict[str, Tensor], batch: int, device: torch.device) -> Tensor | None:
        """(B, 3) the user's count features (zeros counts: a new user), or None without counts."""
        if not self.layout.counts:
            return None
        counts = side.get("user_counts")
        if counts is None:
            counts = torch.zeros(batch, 2, device=device)
        return count_features(counts.float(), self.prior_ctr, self.prior)

    def per_target(self, side: dict[str, Tensor], target_idx: Tensor) -> Tensor | None:
        """(N, target_width): the target's counts from the batch (training) or the item table (serving)."""
        if not self.layout.counts:
            return None
        counts = side.get("target_counts")
        if counts is None:
            counts = self.item_counts[target_idx]
        out = count_features(counts.float(), self.prior_ctr, self.prior)  # (N, 3)
        if not self.layout.user_item:
            return out
        by_value = side.get("target_user_item_counts")  # (N, F, 3): impressions, clicks, recent
        if by_value is None:  # a request without them: a new user
            by_value = out.new_zeros(out.shape[0], len(self.layout.user_item), 3)
        by_value = by_value.float()
        recent = by_value[..., 2:].clamp(min=0)
        parts = [count_features(by_value[..., :2], self.prior_ctr, self.prior), torch.log1p(recent) / 2]
        parts.append(recent / self.layout.recent)
        return torch.cat([out, torch.cat(parts, dim=-1).flatten(1)], dim=-1)  # (N, 3 + 5F)


class WideTerms(nn.Module):
    """The wide part of wide & deep, for logs whose signal is in features: a learned bias per target
    item bucket, per user bucket and per context value, one per (target item column value x context
    value) pair (hashed into `model.feature_buckets * 16` rows), and a linear term of the count features;
    added to the deep head's logit. Why: item quality, user click bias and context x category effects
    are first-order or pairwise, which a bias table learns from a few events and without overfitting
    the deep embeddings, and what a cross-featured logistic regression wins real logs with. Every
    table starts at zero, so an unseen user, item or pair adds nothing."""

    CROSS_FACTOR = 16

    def __init__(self, cfg: ModelConfig, layout: SideLayout) -> None:
        super().__init__()
        self.item = nn.Embedding(cfg.id_buckets, 1)
        self.user = nn.Embedding(cfg.user_buckets, 1) if layout.user_id else None
        n_ctx, n_item = len(layout.event_cat), len(layout.item_cat)
        self.n_ctx, self.n_item, self.buckets = n_ctx, n_item, cfg.feature_buckets
        self.ctx = nn.Embedding(n_ctx * cfg.feature_buckets, 1) if n_ctx else None
        self.cross_rows = cfg.feature_buckets * self.CROSS_FACTOR
        self.cross = nn.Embedding(n_ctx * n_item * self.cross_rows, 1) if n_ctx and n_item else None
        self.counts = nn.Linear(3 + layout.target_count_width if layout.counts else 1, 1, bias=False)
        for table in (self.item, self.user, self.ctx, self.cross, self.counts):
            if table is not None:
                nn.init.zeros_(table.weight)

    def forward(
        self,
        side: dict[str, Tensor],
        target_bucket: Tensor,
        target_item_cat: Tensor | None,
        row_counts: Tensor | None,
        target_counts: Tensor | None,
        group: Tensor | None,
    ) -> Tensor:
        """(N,) wide logit of N targets; per-row inputs are taken at `group` (None: row n)."""

        def per_target(x: Tensor) -> Tensor:
            return x if group is None else x[group]

        out = self.item(target_bucket).squeeze(-1)  # (N,)
        # An absent input reads as its missing value (bucket 0), as SampleSide reads it in the deep part.
        bucket = side.get("user_bucket")
        if self.user is not None:
            users = per_target(bucket) if bucket is not None else torch.zeros_like(target_bucket)
            out = out + self.user(users).squeeze(-1)
        ctx = side.get("ctx_cat")
        if self.ctx is not None:
            ctx = per_target(ctx) if ctx is not None else target_bucket.new_zeros(target_bucket.shape[0], self.n_ctx)
            offsets = torch.arange(self.n_ctx, device=ctx.device) * self.buckets
            out = out + self.ctx(ctx + offsets).sum((-1, -2))
            if self.cross is not None and target_item_cat is not None:
                # pair (item column i, context column c): row = ((i * Fc + c) * R) + hash(item value, ctx value) % R
                pair = (target_item_cat.unsqueeze(-1) * 1_000_003 + ctx.unsqueeze(-2)) % self.cross_rows  # (N, Fi, Fc)
                block = torch.arange(self.n_item * self.n_ctx, device=ctx.device).view(self.n_item, self.n_ctx)
                out = out + self.cross(pair + block * self.cross_rows).sum((-1, -2, -3))
        if row_counts is not None and target_counts is not None:
            out = out + self.counts(torch.cat([per_target(row_counts), target_counts], dim=-1).float()).squeeze(-1)
        return out


__all__ = [
    "ITEM_TABLE_KEYS",
    "FeatureFieldError",
    "SIDE_INPUTS",
    "ItemSide",
    "SampleSide",
    "WideTerms",
    "SideLayout",
    "category_buckets",
    "count_features",
    "encode_request_side",
    "request_user_item_counts",
    "user_item_count_columns",
    "encode_side",
    "item_side_tables",
    "user_buckets",
]
