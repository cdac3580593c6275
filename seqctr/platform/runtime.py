"""Starting or joining Ray the same way everywhere (CLI, tests, jobs), quietly.

Ray Data's per-operator progress bars flood non-interactive logs (CI, Ray Jobs); seqctr prints its
own stage lines instead, so the bars are off unless SEQCTR_PROGRESS_BARS=1.
"""

from __future__ import annotations

import os
from typing import Any

# Environment every Ray worker needs: Train V2, no hub downloads, no tokenizer thread pools.
WORKER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars and execution banners in this process's DataContext."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if os.environ.get("SEQCTR_PROGRESS_BARS") != "1":
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Join RAY_ADDRESS (a cluster, or the job's cluster under `ray job submit`) or start local Ray."""
    import ray

    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS"),
            runtime_env={"env_vars": dict(WORKER_ENV)},
            configure_logging=False,
            **kwargs,
        )
    quiet_ray_data()
