"""Training-time history augmentation, on already-encoded tensors (plain torch, no Ray).

Histories are right-padded and oldest first: row b holds its items at positions [0, hist_len[b]).
Every operation keeps that layout so the model's packing and masking stay valid. Augmentation runs
only on training batches, never on val/test.
"""

from __future__ import annotations

import torch

from seqctr.platform.model.features import UNKNOWN as UNKNOWN_AGE  # the age bucket of a click of unknown time


def _compact(
    idx: torch.Tensor, bucket: torch.Tensor, age: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move kept positions to the front (order preserved) and zero the rest."""
    # A stable sort on "not kept" puts kept positions first without reordering them.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # (B, L)
    new_len = keep.sum(dim=1)
    valid = torch.arange(idx.shape[1], device=idx.device)[None, :] < new_len[:, None]
    idx = torch.gather(idx, 1, order) * valid
    bucket = torch.gather(bucket, 1, order) * valid
    age = torch.gather(age, 1, order) * valid
    return idx, bucket, age, new_len


def augment_history(
    hist_idx: torch.Tensor,
    hist_bucket: torch.Tensor,
    hist_len: torch.Tensor,
    bucket_table: torch.Tensor,
    truncate_prob: float = 0.0,
    drop_prob: float = 0.0,
    replace_prob: float = 0.0,
    generator: torch.Generator | None = None,
    hist_age: torch.Tensor | None = None,
    age_drop_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random recent-window truncation, item dropping and item replacement; returns
    (hist_idx, hist_bucket, hist_len, hist_age).

    - truncate: with `truncate_prob` a row keeps only a random most-recent window (>= 1 item);
    - drop: every history item is removed with `drop_prob` (the row keeps >= 1 item if it had any);
    - replace: every remaining item becomes a random known item with `replace_prob` (noise injection);
    - age drop: with `age_drop_prob` a row's click ages become unknown (1), so the model also scores
      requests that come without timestamps.
    `bucket_table[i]` is the hashed-id bucket of item index i, so replaced items stay consistent.
    Click ages move with their items; a missing `hist_age` means unknown ages.
    """
    B, L = hist_idx.shape
    dev = hist_idx.device
    pos = torch.arange(L, device=dev)[None, :]  # (1, L)
    if hist_age is None:
        hist_age = (pos < hist_len[:, None]).long() * UNKNOWN_AGE
    if age_drop_prob > 0:
        blind = torch.rand(B, generator=generator, device=dev) < age_drop_prob
        hist_age = torch.where(blind[:, None] & (hist_age > 0), torch.full_like(hist_age, UNKNOWN_AGE), hist_age)
    if not (truncate_prob or drop_prob or replace_prob):
        return hist_idx, hist_bucket, hist_len, hist_age
    keep = pos < hist_len[:, None]  # (B, L)

    if truncate_prob > 0:
        cut = torch.rand(B, generator=generator, device=dev) < truncate_prob
        # window in [1, len]; rows with len 0 stay empty
        frac = torch.rand(B, generator=generator, device=dev)
        window = (frac * hist_len.clamp(min=1)).floor().long() + 1
        window = torch.minimum(window, hist_len)
        start = torch.where(cut, hist_len - window, torch.zeros_like(hist_len))
        keep = keep & (pos >= start[:, None])

    if drop_prob > 0:
        dropped = torch.rand(B, L, generator=generator, device=dev) < drop_prob
        survivors = keep & ~dropped
        # never empty a non-empty history: fall back to its most recent item
        empty = survivors.sum(dim=1) == 0
        last = pos == (hist_len - 1).clamp(min=0)[:, None]
        survivors = torch.where(empty[:, None], keep & last, survivors)
        keep = survivors

    hist_idx, hist_bucket, hist_age, hist_len = _compact(hist_idx, hist_bucket, hist_age, keep)

    if replace_prob > 0 and bucket_table.numel() > 2:
        valid = pos < hist_len[:, None]
        swap = valid & (torch.rand(B, L, generator=generator, device=dev) < replace_prob)
        random_items = torch.randint(2, bucket_table.numel(), (B, L), generator=generator, device=dev)
        hist_idx = torch.where(swap, random_items, hist_idx)
        hist_bucket = torch.where(swap, bucket_table.to(dev)[random_items], hist_bucket)
    return hist_idx, hist_bucket, hist_len, hist_age
