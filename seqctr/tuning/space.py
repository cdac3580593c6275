"""The search space: dotted keys of the one experiment config, declared in `tune.space`.

    tune:
      space:
        train.lr: {loguniform: [1e-4, 1e-2]}
        model.hidden_size: {choice: [64, 128]}

A trial's parameters are exactly these dotted overrides, so a trial config is the base config plus
`with_overrides(params)`, validated like any `--set`.
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


def build_search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray Tune domains keyed by dotted config keys; every key and bound is checked up front."""
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: declare at least one dotted key to search")
    space: dict[str, Any] = {}
    for key, spec in cfg.tune.space.items():
        if len(spec) != 1:
            raise ConfigError(f"tune.space.{key}: expected one of {sorted(SAMPLERS)}, got {sorted(spec)}")
        ((kind, args),) = spec.items()
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
