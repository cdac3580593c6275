from __future__ import annotations

import torch

from seqctr.training.augment import augment_history

BUCKETS = torch.arange(100) + 1000  # bucket of item i = 1000 + i


def _batch():
    idx = torch.tensor([[2, 3, 4, 5, 0, 0], [7, 8, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    length = torch.tensor([4, 2, 0])
    return idx, torch.where(idx > 0, BUCKETS[idx], 0), length


def _check_layout(idx, bucket, length):
    pos = torch.arange(idx.shape[1])[None, :]
    assert torch.all((idx > 0) == (pos < length[:, None]))
    assert torch.equal(bucket, torch.where(idx > 0, BUCKETS[idx], 0))


def _ages(idx):
    """Age bucket 2 + item index at real positions, so an age can be traced to its item."""
    return torch.where(idx > 0, idx + 2, 0)


def test_off_returns_inputs_unchanged():
    idx, bucket, length = _batch()
    out = augment_history(idx, bucket, length, BUCKETS, hist_age=_ages(idx))
    assert all(torch.equal(a, b) for a, b in zip(out, (idx, bucket, length, _ages(idx)), strict=True))


def test_missing_ages_are_unknown_at_real_positions_only():
    idx, bucket, length = _batch()
    age = augment_history(idx, bucket, length, BUCKETS)[3]
    assert torch.equal(age, (idx > 0).long())


def test_ages_move_with_their_items():
    idx, bucket, length = _batch()
    gen = torch.Generator().manual_seed(3)
    for kwargs in ({"truncate_prob": 1.0}, {"drop_prob": 0.5}):
        new_idx, _, _, new_age = augment_history(
            idx, bucket, length, BUCKETS, generator=gen, hist_age=_ages(idx), **kwargs
        )
        assert torch.equal(new_age, _ages(new_idx))


def test_age_drop_hides_whole_rows():
    idx, bucket, length = _batch()
    gen = torch.Generator().manual_seed(4)
    _, _, _, age = augment_history(idx, bucket, length, BUCKETS, generator=gen, hist_age=_ages(idx), age_drop_prob=1.0)
    assert torch.equal(age, (idx > 0).long())  # every real position unknown, padding still 0
    _, _, _, kept = augment_history(idx, bucket, length, BUCKETS, generator=gen, hist_age=_ages(idx), age_drop_prob=0.0)
    assert torch.equal(kept, _ages(idx))


def test_truncation_keeps_a_recent_window():
    idx, bucket, length = _batch()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        new_idx, new_bucket, new_len, _ = augment_history(
            idx, bucket, length, BUCKETS, truncate_prob=1.0, generator=gen
        )
        _check_layout(new_idx, new_bucket, new_len)
        assert new_len[0] >= 1 and new_len[2] == 0
        # the kept items are the most recent ones, in order
        assert new_idx[0, : new_len[0]].tolist() == idx[0, 4 - new_len[0] : 4].tolist()


def test_drop_keeps_order_and_never_empties_a_history():
    idx, bucket, length = _batch()
    gen = torch.Generator().manual_seed(1)
    new_idx, new_bucket, new_len, _ = augment_history(idx, bucket, length, BUCKETS, drop_prob=0.999, generator=gen)
    _check_layout(new_idx, new_bucket, new_len)
    assert new_len.tolist() == [1, 1, 0]
    assert new_idx[:2, 0].tolist() == [5, 8]  # the most recent item survives
    partial = augment_history(idx, bucket, length, BUCKETS, drop_prob=0.5, generator=gen)[0][0]
    kept = [int(x) for x in partial if x > 0]
    assert kept == sorted(kept)  # original order preserved


def test_replace_swaps_items_and_their_buckets_consistently():
    idx, bucket, length = _batch()
    gen = torch.Generator().manual_seed(2)
    new_idx, new_bucket, new_len, _ = augment_history(idx, bucket, length, BUCKETS, replace_prob=1.0, generator=gen)
    _check_layout(new_idx, new_bucket, new_len)
    assert torch.equal(new_len, length)
    assert not torch.equal(new_idx, idx)
    assert int(new_idx[new_idx > 0].min()) >= 2
