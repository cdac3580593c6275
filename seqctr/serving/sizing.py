"""Replica sizing: the CPUs each deployment asks for, the Serve options they imply, and whether the
autoscaling bounds can be placed on the cluster at all.

Why this exists: Serve places a replica only where its `num_cpus` fit. With the scorer at 1 CPU and
the encoder at 0.5, a 2-CPU machine could never place the second scorer replica that
`serve.max_replicas: 2` allows, so the autoscaler "scaled" to a replica stuck PENDING forever. The
defaults (scorer 0.5, encoder 0.25) fit `max_replicas: 2` of both on 2 CPUs, and `capacity_warning`
says so up front when a config asks for more than the cluster has.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from seqctr.platform.config import ServeConfig

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ReplicaSizes:
    """CPUs of one CTRScorer replica and of one ItemEncoder replica."""

    scorer_cpus: float
    encoder_cpus: float

    @property
    def scorer_threads(self) -> int:
        """torch threads of a scorer replica: one per whole CPU it reserves, at least one (a 0.5-CPU
        replica runs one thread; more threads than reserved cores only contend with the neighbours)."""
        return threads_for(self.scorer_cpus)

    @property
    def encoder_threads(self) -> int:
        return threads_for(self.encoder_cpus)


def threads_for(cpus: float) -> int:
    return max(1, math.floor(cpus))


def replica_sizes(
    serve_cfg: ServeConfig, scorer_cpus: float | None = None, encoder_cpus: float | None = None
) -> ReplicaSizes:
    """The sizes from `serve.replica_cpus` / `serve.encoder_cpus`, unless given explicitly (builder args)."""
    return ReplicaSizes(
        scorer_cpus=serve_cfg.replica_cpus if scorer_cpus is None else scorer_cpus,
        encoder_cpus=serve_cfg.encoder_cpus if encoder_cpus is None else encoder_cpus,
    )


def autoscaling_config(serve_cfg: ServeConfig) -> dict[str, Any]:
    """Serve's autoscaling_config, straight from ServeConfig. The metrics interval follows a short
    look-back window (Serve's 10 s default would leave a 3 s window with one data point)."""
    return {
        "min_replicas": serve_cfg.min_replicas,
        "max_replicas": serve_cfg.max_replicas,
        "target_ongoing_requests": serve_cfg.target_ongoing_requests,
        "upscale_delay_s": serve_cfg.upscale_delay_s,
        "downscale_delay_s": serve_cfg.downscale_delay_s,
        "look_back_period_s": serve_cfg.look_back_period_s,
        "metrics_interval_s": min(10.0, serve_cfg.look_back_period_s / 3),
    }


def max_ongoing_requests(serve_cfg: ServeConfig) -> int:
    """`serve.max_ongoing_requests`, or (0) room for two full batches and twice the autoscaling target."""
    if serve_cfg.max_ongoing_requests:
        return serve_cfg.max_ongoing_requests
    return max(8, 2 * serve_cfg.max_batch_size, math.ceil(2 * serve_cfg.target_ongoing_requests))


def cpus_needed(serve_cfg: ServeConfig, sizes: ReplicaSizes) -> float:
    """CPUs the app reserves at `serve.max_replicas` (scorer and encoder both scale to it; the Serve
    controller and proxies reserve none)."""
    return serve_cfg.max_replicas * (sizes.scorer_cpus + sizes.encoder_cpus)


def capacity_warning(serve_cfg: ServeConfig, sizes: ReplicaSizes, cluster_cpus: float) -> str | None:
    """Why the configured bounds cannot all be placed on `cluster_cpus`, or None when they fit."""
    need = cpus_needed(serve_cfg, sizes)
    if need <= cluster_cpus + 1e-9:
        return None
    fit = math.floor(cluster_cpus / (sizes.scorer_cpus + sizes.encoder_cpus) + 1e-9)
    return (
        f"serve.max_replicas={serve_cfg.max_replicas} needs {need:g} CPUs "
        f"({serve_cfg.max_replicas} x (scorer {sizes.scorer_cpus:g} + encoder {sizes.encoder_cpus:g})) but the "
        f"cluster has {cluster_cpus:g}: at most {fit} replica(s) can run, the rest would stay PENDING. Lower "
        "serve.max_replicas, serve.replica_cpus or serve.encoder_cpus, or add nodes"
    )


def cluster_cpus() -> float | None:
    """CPUs of the connected Ray cluster now (an autoscaling cluster may add more); None without Ray."""
    import ray

    if not ray.is_initialized():
        return None
    return float(ray.cluster_resources().get("CPU", 0.0))


def warn_if_unplaceable(serve_cfg: ServeConfig, sizes: ReplicaSizes, cpus: float | None = None) -> str | None:
    """Log (and return) `capacity_warning` against the cluster's CPUs; the app is still built, since a
    cluster with an autoscaler may grow to fit it."""
    cpus = cluster_cpus() if cpus is None else cpus
    if cpus is None:
        return None
    message = capacity_warning(serve_cfg, sizes, cpus)
    if message:
        logger.warning("seqctr serve: %s", message)
    return message
