"""Starting or joining Ray the same way everywhere (CLI, tests, jobs), quietly.

Ray Data's per-operator progress bars flood non-interactive logs (CI, Ray Jobs); seqctr prints its
own stage lines instead, so the bars are off unless SEQCTR_PROGRESS_BARS=1.
"""

from __future__ import annotations

import os
from typing import Any

# Environment every Ray worker needs (local Ray, cluster jobs, tests): Train V2, no hub downloads, no
# tokenizer thread pools. (Ray Data's progress bars are turned off in each driver: quiet_ray_data.)
WORKER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Ray 2.60's V2 Parquet datasource starts dozens of helper actors per read, which swamps a small
    # machine; the V1 reader is as fast for our file sizes.
    "RAY_DATA_USE_DATASOURCE_V2": "0",
}


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars and execution banners in this process's DataContext."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if os.environ.get("SEQCTR_PROGRESS_BARS") != "1":
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = os.environ.get("RAY_DATA_USE_DATASOURCE_V2", "0") == "1"
    ctx.verbose_stats_logs = False


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Join RAY_ADDRESS (a cluster, or the job's cluster under `ray job submit`) or start local Ray."""
    import ray

    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # Joining a cluster (or running as a Ray Job) keeps the job's own runtime env, which
        # `seqctr submit` fills with WORKER_ENV; a local instance gets it here.
        runtime_env = None if address else {"env_vars": dict(WORKER_ENV)}
        ray.init(address=address, runtime_env=runtime_env, configure_logging=False, **kwargs)
    quiet_ray_data()
