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
        (kind, args), = spec.items()
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
