"""The CTR model: shapes, padding invariance, unknown ids, candidate scoring, attention, fine-tuning,
learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from seqctr.platform.config import ModelConfig
from seqctr.platform.model.ctr import CTRModel, build_model
from seqctr.platform.model.features import AGE_BUCKETS
from seqctr.platform.model.metrics import auc
from seqctr.platform.model.side import SideLayout

NUM_ITEMS, TEXT_DIM, BUCKETS = 30, 6, 64


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread; several threads on a shared, busy 2-core box are ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(id_buckets=BUCKETS, embed_dim=8, hidden_size=16, mlp_hidden=[16], dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def text_table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(NUM_ITEMS, TEXT_DIM)).astype(np.float32)


def make_model(seed: int = 0, **overrides) -> CTRModel:
    torch.manual_seed(seed)
    cfg = tiny_cfg(**overrides)
    model = build_model(cfg, NUM_ITEMS, text_table(seed) if cfg.text else None)
    return model.eval()


def make_batch(seed: int = 0, B: int = 8, L: int = 6) -> dict[str, torch.Tensor]:
    """Right-padded histories of random length (row 0 is always empty)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    lengths[0] = 0
    lengths[1] = L
    idx = torch.randint(2, NUM_ITEMS, (B, L), generator=g)
    idx = idx * (torch.arange(L) < lengths[:, None])
    target = torch.randint(2, NUM_ITEMS, (B,), generator=g)
    age = torch.randint(1, AGE_BUCKETS, (B, L), generator=g) * (idx > 0)  # 1 = unknown age, 2.. log2 s
    return {
        "hist_idx": idx,
        "hist_bucket": idx % BUCKETS,  # identity hashing for the test; 0 stays 0
        "hist_age": age,
        "hist_len": lengths,
        "target_idx": target,
        "target_bucket": target % BUCKETS,
    }


def pad_right(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for key in ("hist_idx", "hist_bucket", "hist_age"):
        out[key] = torch.cat([batch[key], torch.zeros(batch[key].shape[0], extra, dtype=torch.long)], 1)
    return out


ALL_VARIANTS = [
    dict(sequence=s, attention=a, text=t) for s in ("lstm", "gru", "mean") for a in (False, True) for t in (False, True)
]


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_shapes_and_padding_invariance(variant: dict) -> None:
    model = make_model(**variant, num_layers=2)
    batch = make_batch()
    with torch.no_grad():
        logits, weights = model(batch, return_attention=True)
        padded = model(pad_right(batch, 5))
    assert logits.shape == (8,) and logits.dtype == torch.float32
    assert weights.shape == (8, 6)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(padded, logits, atol=1e-6, rtol=0)


def test_ids_beyond_the_length_are_padding() -> None:
    """Positions at or after hist_len never matter, whatever they hold."""
    model = make_model(attention=True)
    batch = make_batch()
    noisy = dict(batch)
    junk = torch.randint(2, NUM_ITEMS, batch["hist_idx"].shape)
    beyond = torch.arange(6) >= batch["hist_len"][:, None]
    noisy["hist_idx"] = torch.where(beyond, junk, batch["hist_idx"])
    noisy["hist_bucket"] = noisy["hist_idx"] % BUCKETS
    with torch.no_grad():
        torch.testing.assert_close(model(noisy), model(batch), atol=1e-6, rtol=0)


def test_click_ages_change_the_score_only_with_time_features() -> None:
    batch = make_batch()
    older = dict(batch, hist_age=torch.where(batch["hist_idx"] > 0, AGE_BUCKETS - 1, 0))
    unknown = dict(batch, hist_age=(batch["hist_idx"] > 0).long())
    no_age = {k: v for k, v in batch.items() if k != "hist_age"}
    has_history = batch["hist_len"] > 0
    with torch.no_grad():
        timed = make_model(time_features=True)
        assert not torch.allclose(timed(older)[has_history], timed(batch)[has_history])
        torch.testing.assert_close(timed(no_age), timed(unknown), atol=0, rtol=0)  # missing = unknown
        untimed = make_model(time_features=False)
        assert untimed.age_embedding is None
        torch.testing.assert_close(untimed(older), untimed(batch), atol=0, rtol=0)


def test_hist_age_out_of_range_names_the_key() -> None:
    batch = make_batch()
    with pytest.raises(ValueError, match="hist_age outside"):
        make_model()(dict(batch, hist_age=batch["hist_age"] + AGE_BUCKETS))
    with pytest.raises(ValueError, match="hist_age .* must match hist_idx"):
        make_model()(dict(batch, hist_age=batch["hist_age"][:, :2]))


@pytest.mark.parametrize("sequence", ["lstm", "gru", "mean"])
def test_empty_history_gives_zero_state_and_finite_logit(sequence: str) -> None:
    model = make_model(sequence=sequence, attention=True)
    batch = make_batch()
    with torch.no_grad():
        state = model.encode_history(batch["hist_idx"], batch["hist_bucket"], batch["hist_len"])
        logits, weights = model(batch, return_attention=True)
    assert batch["hist_len"][0] == 0
    assert torch.count_nonzero(state.outputs[0]) == 0 and torch.count_nonzero(state.last[0]) == 0
    assert torch.isfinite(logits).all()
    assert torch.count_nonzero(weights[0]) == 0
    # A batch whose every history is empty, and a history tensor with no columns at all.
    empty = dict(batch, hist_len=torch.zeros(8, dtype=torch.long))
    no_columns = dict(
        empty,
        hist_idx=torch.zeros(8, 0, dtype=torch.long),
        hist_bucket=torch.zeros(8, 0, dtype=torch.long),
        hist_age=torch.zeros(8, 0, dtype=torch.long),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(no_columns), model(empty), atol=1e-6, rtol=0)


def test_unknown_and_out_of_range_item_indices_read_as_unknown() -> None:
    model = make_model(attention=True)
    batch = make_batch()
    unknown = dict(batch)
    unknown["hist_idx"] = torch.where(batch["hist_idx"] > 0, 1, 0)
    unknown["target_idx"] = torch.ones_like(batch["target_idx"])
    beyond = dict(unknown)
    beyond["hist_idx"] = torch.where(batch["hist_idx"] > 0, NUM_ITEMS + 7, 0)
    beyond["target_idx"] = torch.full_like(batch["target_idx"], -3)
    with torch.no_grad():
        expected = model(unknown)
        torch.testing.assert_close(model(beyond), expected, atol=0, rtol=0)
        # Target index 0 is not padding for a target: it reads as unknown too.
        torch.testing.assert_close(model(dict(unknown, target_idx=torch.zeros(8, dtype=torch.long))), expected)


def test_bad_inputs_raise_naming_the_key() -> None:
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match=r"hist_bucket outside \[0, 64\)"):
        model(dict(batch, hist_bucket=batch["hist_bucket"] + BUCKETS))
    with pytest.raises(ValueError, match=r"target_bucket outside \[0, 64\)"):
        model(dict(batch, target_bucket=batch["target_bucket"] - 100))
    with pytest.raises(ValueError, match=r"hist_len outside \[0, 6\]"):
        model(dict(batch, hist_len=batch["hist_len"] + 7))
    with pytest.raises(ValueError, match=r"missing keys \['target_bucket'\]"):
        model({k: v for k, v in batch.items() if k != "target_bucket"})
    with pytest.raises(ValueError, match=r"target_text \(8, 3\) must be \(B, Dt\) = \(8, 6\)"):
        model(dict(batch, target_text=torch.zeros(8, 3)))


def test_text_table_rows_and_padding_vectors() -> None:
    cfg = tiny_cfg()
    short = text_table()[:20]  # the item index grew to 30 rows since the table was built
    model = build_model(cfg, NUM_ITEMS, short)
    table = model.items.text_table
    assert table.shape == (NUM_ITEMS, TEXT_DIM)
    assert torch.count_nonzero(table[:2]) == 0 and torch.count_nonzero(table[20:]) == 0
    torch.testing.assert_close(table[2:20], torch.from_numpy(short[2:20]))
    assert "items.text_table" in model.state_dict()  # checkpoint.py stores keys ending in text_table apart
    idx = torch.tensor([[3, 0, 0]])
    vec = model.items(idx, idx % BUCKETS, model.items.text_of([idx])[0])
    assert torch.count_nonzero(vec[0, 1:]) == 0 and torch.count_nonzero(vec[0, 0]) > 0
    with pytest.raises(ValueError, match=r"text_table: shape \(31, 6\) does not fit \(30 items, 6 columns\)"):
        build_model(cfg, NUM_ITEMS, np.zeros((31, TEXT_DIM), np.float32))
    with pytest.raises(ValueError, match="model.text=true needs a text_table"):
        build_model(cfg, NUM_ITEMS, None)
    assert build_model(tiny_cfg(text=False), NUM_ITEMS, None).text_dim == 0


def test_target_text_overrides_the_table_lookup_where_masked() -> None:
    model = make_model(attention=True)
    batch = make_batch()
    table = model.items.text_table
    mask = torch.tensor([True, False] * 4)
    with torch.no_grad():
        base = model(batch)
        same = model(dict(batch, target_text=table[batch["target_idx"]]))
        new_text = torch.randn(8, TEXT_DIM)
        changed = model(dict(batch, target_text=new_text, target_text_mask=mask))
    torch.testing.assert_close(same, base, atol=1e-6, rtol=0)
    assert torch.equal(changed[~mask], base[~mask])
    assert (changed[mask] - base[mask]).abs().min() > 1e-6


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_score_candidates_equals_forward_on_expanded_batch(variant: dict) -> None:
    model = make_model(**variant)
    batch = make_batch(seed=3)
    C = 25
    cand = torch.randint(0, NUM_ITEMS + 5, (C,))  # includes 0, unknown and out-of-range indices
    text = torch.randn(C, TEXT_DIM)
    mask = torch.rand(C) < 0.3
    for row in (0, 1, 4):  # empty, full and partial histories
        hist = {k: batch[k][row : row + 1] for k in ("hist_idx", "hist_bucket", "hist_len", "hist_age")}
        expanded = {k: v.expand(C, *v.shape[1:]) for k, v in hist.items()}
        expanded.update(target_idx=cand, target_bucket=cand % BUCKETS, target_text=text, target_text_mask=mask)
        with torch.no_grad():
            got = model.score_candidates(
                **hist, target_idx=cand, target_bucket=cand % BUCKETS, target_text=text, target_text_mask=mask
            )
            want = model(expanded)
        assert got.shape == (C,)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"one user's history \(1, L\)"):
        model.score_candidates(batch["hist_idx"], batch["hist_bucket"], batch["hist_len"], cand, cand)


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_score_groups_equals_forward_on_expanded_batch(variant: dict) -> None:
    """A serving batch: several histories, each with its own candidates (one has none), scored in one call."""
    model = make_model(**variant)
    batch = make_batch(seed=4)
    counts = torch.tensor([3, 5, 0, 1, 4, 2, 6, 2])  # candidates per history; row 0 is empty, row 1 full
    group = torch.repeat_interleave(torch.arange(8), counts)  # (N,)
    N = int(counts.sum())
    cand = torch.randint(0, NUM_ITEMS + 5, (N,))  # includes 0, unknown and out-of-range indices
    text, mask = torch.randn(N, TEXT_DIM), torch.rand(N) < 0.3
    hist = {k: batch[k] for k in ("hist_idx", "hist_bucket", "hist_len", "hist_age")}
    expanded = {k: v[group] for k, v in hist.items()}
    expanded.update(target_idx=cand, target_bucket=cand % BUCKETS, target_text=text, target_text_mask=mask)
    with torch.no_grad():
        got, got_weights = model.score_groups(
            **hist,
            target_idx=cand,
            target_bucket=cand % BUCKETS,
            group=group,
            target_text=text,
            target_text_mask=mask,
            return_attention=True,
        )
        want, want_weights = model(expanded, return_attention=True)
    assert got.shape == (N,) and got_weights.shape == (N, batch["hist_idx"].shape[1])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_weights, want_weights, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"group outside \[0, 8\)"):
        model.score_groups(**hist, target_idx=cand, target_bucket=cand % BUCKETS, group=group + 1)
    with pytest.raises(ValueError, match="must all be \\(N,\\)"):
        model.score_groups(**hist, target_idx=cand, target_bucket=cand % BUCKETS, group=group[:-1])


@pytest.mark.parametrize("sequence", ["lstm", "mean"])
def test_attention_weights_sum_to_one_over_valid_positions(sequence: str) -> None:
    model = make_model(sequence=sequence, attention=True)
    batch = make_batch(B=16, L=7)
    with torch.no_grad():
        _, weights = model(batch, return_attention=True)
    valid = torch.arange(7) < batch["hist_len"][:, None]
    assert torch.count_nonzero(weights[~valid]) == 0
    nonempty = batch["hist_len"] > 0
    torch.testing.assert_close(weights.sum(1)[nonempty], torch.ones(int(nonempty.sum())))
    assert (weights[valid] > 0).all()
    assert torch.count_nonzero(weights.sum(1)[~nonempty]) == 0


# ----------------------------------------------------------------------------- fine-tuning BERT


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    return BertModel(config)


def item_tokens(T: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (NUM_ITEMS, T), generator=g)
    lengths = torch.randint(1, T + 1, (NUM_ITEMS,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()
    ids, mask = ids * mask, mask
    ids[:2], mask[:2] = 0, 0  # padding and unknown rows have no text
    return ids, mask


def finetune_model(**overrides) -> CTRModel:
    cfg = tiny_cfg(bert_trainable_layers=1, attention=True, **overrides)
    return build_model(cfg, NUM_ITEMS, None, bert=tiny_bert(), item_tokens=item_tokens())


def test_finetune_trains_only_the_top_bert_layer() -> None:
    model = finetune_model().train()
    bert = model.items.bert
    before = {k: v.detach().clone() for k, v in bert.state_dict().items()}
    groups = model.param_groups(lr=1e-2, bert_lr=1e-3, weight_decay=0.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("model", 1e-2), ("bert", 1e-3)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in bert.encoder.layer[1].parameters()}
    optimizer = torch.optim.AdamW(groups)
    for step in range(3):
        batch = make_batch(seed=step)
        labels = (torch.arange(8) % 2).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = bert.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)
    assert "encoder.layer.1.output.dense.weight" in changed


@pytest.mark.parametrize("cached", [True, False])
def test_finetune_sends_only_unique_items_through_bert(cached: bool) -> None:
    model = finetune_model().eval()
    if not cached:
        model.items.frozen_cache_bytes = 0  # too big to cache: the whole encoder runs per step
    rows: list[int] = []
    model.items.bert.encoder.layer[1].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    batch = make_batch(B=16, L=6)
    with torch.no_grad():
        logits = model(batch)
    everything = torch.cat([batch["hist_idx"].flatten(), batch["target_idx"]])
    unique = int(torch.unique(everything[everything >= 2]).numel())
    # The trainable top layer sees each unique item once (with the cache, after one pass over all items).
    assert rows == ([NUM_ITEMS, unique] if cached else [unique])
    assert unique < int((everything >= 2).sum())  # the batch repeats items
    assert torch.isfinite(logits).all()


def test_finetune_cache_of_the_frozen_layers_changes_no_score() -> None:
    """Top layers over the cached frozen output == the whole encoder per step (eval: no dropout)."""
    cached, full = finetune_model().eval(), finetune_model().eval()
    full.items.frozen_cache_bytes = 0
    batch = make_batch(seed=7, B=16)
    with torch.no_grad():
        torch.testing.assert_close(cached(batch), full(batch), atol=1e-5, rtol=0)
        assert cached.items._frozen_cache is not None and full.items._frozen_cache is None
        # New weights (a checkpoint restore) drop the cache, so it never serves stale frozen outputs.
        state = {k: v + 0.01 if "encoder.layer.0." in k else v for k, v in full.state_dict().items()}
        cached.load_state_dict(state)
        full.load_state_dict(state)
        assert cached.items._frozen_cache is None
        torch.testing.assert_close(cached(batch), full(batch), atol=1e-5, rtol=0)


def test_finetune_score_candidates_equals_forward_and_frozen_mode_has_one_group() -> None:
    model = finetune_model().eval()
    batch = make_batch(seed=5)
    cand = torch.arange(NUM_ITEMS)
    hist = {k: batch[k][4:5] for k in ("hist_idx", "hist_bucket", "hist_len")}
    expanded = {k: v.expand(NUM_ITEMS, *v.shape[1:]) for k, v in hist.items()}
    with torch.no_grad():
        got = model.score_candidates(**hist, target_idx=cand, target_bucket=cand % BUCKETS)
        want = model(dict(expanded, target_idx=cand, target_bucket=cand % BUCKETS))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    frozen = make_model()
    groups = frozen.param_groups(lr=1e-3, bert_lr=1e-5, weight_decay=0.1)
    assert len(groups) == 1 and len(groups[0]["params"]) == sum(1 for p in frozen.parameters())
    with pytest.raises(ValueError, match="bert_trainable_layers=3 but the BERT model has 2 layers"):
        build_model(tiny_cfg(bert_trainable_layers=3), NUM_ITEMS, None, bert=tiny_bert(), item_tokens=item_tokens())
    with pytest.raises(ValueError, match="needs `bert` and `item_tokens`"):
        build_model(tiny_cfg(bert_trainable_layers=1), NUM_ITEMS, None, text_dim=16)


# ----------------------------------------------------------------------------- it learns


def category_task(rng: np.random.Generator, n: int, categories: int, L: int) -> tuple[dict, torch.Tensor]:
    """label = the target's category appears in the history (category = item index % categories)."""
    lengths = rng.integers(0, L + 1, n)
    idx = rng.integers(2, NUM_ITEMS, (n, L)) * (np.arange(L) < lengths[:, None])
    target = rng.integers(2, NUM_ITEMS, n)
    hist_cat = np.where(idx > 0, idx % categories, -1)
    labels = (hist_cat == (target % categories)[:, None]).any(1).astype(np.float32)
    t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    batch = {
        "hist_idx": t(idx),
        "hist_bucket": t(idx),
        "hist_len": t(lengths),
        "target_idx": t(target),
        "target_bucket": t(target),
    }
    return batch, torch.as_tensor(labels)


def test_learns_whether_the_target_category_is_in_the_history() -> None:
    categories, L = 4, 6
    table = np.eye(NUM_ITEMS, categories, dtype=np.float32)[np.arange(NUM_ITEMS) % categories]  # one-hot text
    torch.manual_seed(0)
    model = build_model(tiny_cfg(attention=True), NUM_ITEMS, table)
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, bert_lr=1e-5, weight_decay=0.0))
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(200):
        batch, labels = category_task(rng, 128, categories, L)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch, labels = category_task(np.random.default_rng(99), 2000, categories, L)
    with torch.no_grad():
        scores = model(batch).numpy()
    assert 0.3 < labels.mean() < 0.7
    assert auc(labels.numpy(), scores) > 0.8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_is_padding_invariant_and_runs_under_bf16_autocast() -> None:
    model = make_model(attention=True, num_layers=2)
    batch = make_batch()
    with torch.no_grad():
        cpu = model(batch)
        model.to("cuda")
        on_gpu = {k: v.cuda() for k, v in batch.items()}
        gpu = model(on_gpu)
        padded = model({k: v.cuda() for k, v in pad_right(batch, 5).items()})
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(on_gpu)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=5e-3, rtol=0)  # cuDNN may use TF32
    torch.testing.assert_close(padded, gpu, atol=1e-5, rtol=0)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


# ----------------------------------------------------------------------------- fitting real data


def side_model(**overrides) -> CTRModel:
    """Every id-embedding table there is: item ids, an item side column, user ids, a context column."""
    torch.manual_seed(0)
    layout = SideLayout(event_cat=("device",), item_cat=("brand",), user_id=True)
    cfg = tiny_cfg(text=False, feature_buckets=16, user_buckets=32, user_dim=4, feature_dim=4, **overrides)
    return build_model(cfg, NUM_ITEMS, None, side_layout=layout)


def test_embedding_weight_decay_gives_the_id_tables_their_own_group_and_decay() -> None:
    model = side_model()
    tables = [model.items.id_embedding, model.items.side.cat_embedding, model.sample_side.user, model.sample_side.ctx]
    tables += [model.wide.item, model.wide.user, model.wide.ctx, model.wide.cross]  # the wide part's bias tables
    assert {id(t) for t in model.id_embeddings()} == {id(t) for t in tables}
    assert model.age_embedding is not None and all(t is not model.age_embedding for t in model.id_embeddings())
    # Unset (None): one "model" group, as before.
    (single,) = model.param_groups(lr=0.1, bert_lr=1e-5, weight_decay=0.01)
    assert single["name"] == "model" and len(single["params"]) == sum(1 for _ in model.parameters())
    groups = model.param_groups(lr=0.1, bert_lr=1e-5, weight_decay=0.01, embedding_weight_decay=2.0)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [("model", 0.1, 0.01), ("embeddings", 0.1, 2.0)]
    assert {id(p) for p in groups[1]["params"]} == {id(t.weight) for t in tables}
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in groups[0]["params"]} & {id(p) for p in groups[1]["params"]}
    # The decay each group gets: with zero gradients an AdamW step only decays, p <- p * (1 - lr * wd).
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.optim.AdamW(groups).step()
    tables = {"items.id_embedding.weight", "items.side.cat_embedding.weight"}
    tables |= {"sample_side.user.weight", "sample_side.ctx.weight"}
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * (2.0 if name in tables else 0.01)
        torch.testing.assert_close(p.detach(), before[name] * factor, atol=1e-7, rtol=1e-6, msg=name)


def item_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(2, NUM_ITEMS, (8, 6), generator=torch.Generator().manual_seed(3))
    idx[:, 4:] = 0  # padding
    return idx, idx % BUCKETS


def test_item_dropout_trains_only_and_keeps_padding_exactly_zero() -> None:
    dropped, plain = make_model(item_dropout=0.5), make_model(item_dropout=0.0)
    idx, bucket = item_inputs()
    (text,) = plain.items.text_of([idx])
    with torch.no_grad():
        want = plain.items(idx, bucket, text)  # (B, L, D), the same weights: dropout has none
        torch.testing.assert_close(dropped.items(idx, bucket, text), want, atol=0, rtol=0)  # eval: off
        batch = make_batch()
        torch.testing.assert_close(dropped(batch), plain(batch), atol=0, rtol=0)
        dropped.train()
        got = dropped.items(idx, bucket, text)
    real = (idx != 0).unsqueeze(-1).expand_as(got)
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))  # padding stays exactly zero
    kept = got[real] != 0
    assert 0.3 < kept.float().mean() < 0.7  # about half of the real entries dropped...
    torch.testing.assert_close(got[real][kept], 2 * want[real][kept])  # ...the rest scaled by 1 / (1 - p)


def test_no_item_dropout_draws_no_random_numbers() -> None:
    model = make_model(item_dropout=0.0).train()
    idx, bucket = item_inputs()
    (text,) = model.items.text_of([idx])
    state = torch.get_rng_state()
    model.items(idx, bucket, text)
    assert torch.equal(torch.get_rng_state(), state)  # default runs draw the same dropout masks as before


def test_text_dropout_drops_whole_text_parts_while_training_only_and_keeps_padding_zero() -> None:
    """model.text_dropout: an item vector loses its text part (its id stays), as an item without text has none."""
    model = make_model(text_dropout=0.5)
    items = model.items
    idx = torch.tensor([[0, 2, 3, 4, 5, 6, 7, 8]]).repeat(64, 1)
    bucket, text = idx % BUCKETS, items.text_of([idx])[0]
    id_part = items.id_embedding(bucket)
    full = items(idx, bucket, text)  # eval mode: nothing dropped
    torch.testing.assert_close(full, (id_part + items.text_proj(text)) * (idx != 0).unsqueeze(-1))
    items.train()
    torch.manual_seed(0)
    dropped = items(idx, bucket, text)
    assert torch.all(dropped[:, 0] == 0)  # padding stays exactly zero
    no_text = torch.isclose(dropped, id_part, atol=1e-6).all(-1)[:, 1:]
    with_text = torch.isclose(dropped, full, atol=1e-6).all(-1)[:, 1:]
    assert torch.all(no_text | with_text) and 0.3 < no_text.float().mean() < 0.7
