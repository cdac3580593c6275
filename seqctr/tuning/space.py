"""The search space: dotted keys of the one experiment config, declared in `tune.space`.

    tune:
      space:
        train.lr: {loguniform: [1e-4, 1e-2]}
        model.hidden_size: {choice: [64, 128]}

A trial's parameters are exactly these dotted overrides, so a trial config is the base config plus
`with_overrides(params)`, validated like any `--set`. What the campaign prepares once for all trials
(the samples build, the item tables, the text embeddings, the encoded datasets) comes from the base
config, so a key that changes it cannot be searched: it is refused up front (SHARED_KEYS), never ignored.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from seqctr.platform.config import ConfigError, ExperimentConfig

SAMPLERS = {
    "choice": lambda args: tune.choice(args),
    "uniform": lambda args: tune.uniform(*args),
    "loguniform": lambda args: tune.loguniform(*args),
    "randint": lambda args: tune.randint(*args),
    "quniform": lambda args: tune.quniform(*args),
}

# Keys (or prefixes, ending in ".") of what a campaign prepares once from the base config and every trial
# shares: a trial's own value would be silently ignored. data.features.user_id is the exception: the
# campaign encodes the user's bucket whenever a trial may turn it on (shared_data_config).
SHARED_KEYS = (
    "data.",
    "embed.",
    "model.text",
    "model.bert_trainable_layers",
    "model.id_buckets",
    "model.feature_buckets",
    "model.user_buckets",
    "train.max_train_samples",
    "train.shuffle",
    "train.sharding",
)
PER_TRIAL_KEYS = ("data.features.user_id",)


def shared_key(key: str) -> bool:
    """Whether `key` changes what the campaign's trials share (see SHARED_KEYS)."""
    if key in PER_TRIAL_KEYS:
        return False
    return any(key.startswith(k) if k.endswith(".") else key == k for k in SHARED_KEYS)


def build_search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray Tune domains keyed by dotted config keys; every key and bound is checked up front."""
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: declare at least one dotted key to search")
    space: dict[str, Any] = {}
    for key, spec in cfg.tune.space.items():
        if len(spec) != 1:
            raise ConfigError(f"tune.space.{key}: expected one of {sorted(SAMPLERS)}, got {sorted(spec)}")
        ((kind, args),) = spec.items()
        if shared_key(key):
            raise ConfigError(
                f"tune.space.{key}: every trial shares the samples, item tables, embeddings and encoded datasets "
                f"the campaign prepares once from the base config, so a trial's {key} would be ignored; "
                f"run one campaign per value instead (--set {key}=...)"
            )
        if kind not in SAMPLERS:
            raise ConfigError(f"tune.space.{key}: unknown sampler '{kind}' (use one of {sorted(SAMPLERS)})")
        if kind != "choice" and len(args) < 2:
            raise ConfigError(f"tune.space.{key}: {kind} needs [low, high]")
        for probe in args if kind == "choice" else args[:1]:
            try:
                cfg.with_overrides({key: probe})  # the key exists and the value type-checks
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: {err}") from None
        space[key] = SAMPLERS[kind](args)
    return space


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment config of one trial: only the searched keys differ from the base."""
    return base.with_overrides({k: v for k, v in params.items() if k in base.tune.space})


def shared_data_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config the campaign's shared datasets and assets are prepared with: the base, with the user's
    hashed bucket encoded whenever a trial may turn data.features.user_id on (a model without the user
    id ignores the column), so that trial gets the user bias it asked for."""
    spec = cfg.tune.space.get("data.features.user_id", {})
    values = next(iter(spec.values()), [])
    if not cfg.data.features.user_id and True in values:
        return cfg.with_overrides({"data.features.user_id": True})
    return cfg


def base_point(cfg: ExperimentConfig) -> dict[str, Any]:
    """The base config's own value of every searched key that lies inside its declared range.

    Evaluated as the campaign's first trial, so the winner is never worse on val than the config
    being tuned; a key whose base value is outside its range is left to the search."""
    point: dict[str, Any] = {}
    flat = cfg.to_dict()
    for key, spec in cfg.tune.space.items():
        value: Any = flat
        for part in key.split("."):
            value = value[part]
        ((kind, args),) = spec.items()
        inside = value in args if kind == "choice" else args[0] <= value <= args[1]
        if inside:
            point[key] = value
    return point
