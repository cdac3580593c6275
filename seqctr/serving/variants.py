"""Champion and challenger: several models in one scorer, users split between them by a stable hash.

    serve:
      variants:
        champion:   {model: registry://seqctr@production, weight: 0.9}
        challenger: {model: registry://seqctr@challenger, weight: 0.1}
        shadow:     {model: registry://seqctr@v0007, shadow: true, weight: 0.5}  # scores 50% in the background

Routing: a user's point in [0, 1) is a stable 64-bit hash of `user_id` (salted, so it is independent of
the id's embedding bucket); the served variants own consecutive ranges of [0, 1) in config order, each as
wide as its share of the weights. So a user sees one model for as long as the weights stand, and moving
weight from one variant to the next moves only the users in the range that changed hands. A request
without user_id gets a random point. A shadow samples requests the same way (its own salt per name).

Why side by side in the CTRScorer replica rather than one deployment per variant (Serve's model
composition): on 2 CPUs every Serve hop costs more than scoring a request (bench/serve_latency.py), so a
router in front of per-variant deployments would add a hop to each request; here a request is still one
hop (proxy -> scorer), one `@serve.batch` batches the requests of every variant (`_score_items` runs one
forward per model present in the batch), the ItemEncoder is shared, and one user_config change reloads
or re-weights the variants of a replica together. The price: each replica holds every variant's weights
and item table (their memory adds up) and the variants scale together.

This module is pure (no Serve): the user_config schema, the routing table and the routing functions.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from seqctr.platform.config import VARIANT_NAME, ExperimentConfig
from seqctr.platform.model.features import hash64

ROUTE_SEED = 0x5EED_C7A1  # salt of the routing hash: a user's variant does not follow their id's bucket
_UNIT = 2.0**-53
_MASK = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # features.hash64's


class VariantSpec(BaseModel):
    """One variant in CTRScorer's user_config (`variants: {NAME: {...}}`); like the single ModelSpec
    (`model` as given, `resolved` as pinned, `fallback` for a new replica whose load fails) plus routing."""

    model_config = ConfigDict(extra="forbid")
    model: str
    resolved: str | None = None
    fallback: str | None = None
    weight: float = Field(1.0, ge=0)
    shadow: bool = False

    @property
    def source(self) -> str:
        """What is loaded: the pinned URI, else the URI as given."""
        return self.resolved or self.model


def check_variants(variants: dict[str, VariantSpec]) -> None:
    """The rules of `serve.variants`, for a user_config that did not come through the config."""
    for name, spec in variants.items():
        if not re.fullmatch(VARIANT_NAME, name):
            raise ValueError(f"serve.variants: name {name!r} must match {VARIANT_NAME}")
        if spec.shadow and spec.weight > 1:
            raise ValueError(f"serve.variants.{name}: a shadow's weight is the share of requests it scores, 0..1")
    if variants and sum(s.weight for s in variants.values() if not s.shadow) <= 0:
        raise ValueError("serve.variants: the weights of the served (non-shadow) variants must sum to > 0")


class VariantsSpec(BaseModel):
    """Validates the `variants` of a user_config with the config's rules (errors name serve.variants)."""

    model_config = ConfigDict(extra="forbid")
    variants: dict[str, VariantSpec] = Field(default_factory=dict)

    @field_validator("variants", mode="after")
    @classmethod
    def _servable(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        check_variants(variants)
        return variants


def variant_specs(cfg: ExperimentConfig) -> dict[str, VariantSpec]:
    """The user_config form of `cfg.serve.variants` (not yet pinned)."""
    return {
        name: VariantSpec(model=v.model, weight=v.weight, shadow=v.shadow) for name, v in cfg.serve.variants.items()
    }


# ----------------------------------------------------------------------------- routing (pure)


def user_points(user_ids: Sequence[str | None], seed: int = ROUTE_SEED, rng: random.Random | None = None) -> np.ndarray:
    """(n,) float64 points in [0, 1): the top 53 bits of hash64(user_id, seed); random where user_id is None."""
    ids = ["" if u is None else str(u) for u in user_ids]
    with np.errstate(over="ignore"):  # hash64's seed mixing wraps around 2**64 by design
        points = (hash64(ids, seed=seed) >> np.uint64(11)).astype(np.float64) * _UNIT
    for i, user in enumerate(user_ids):
        if user is None:
            points[i] = (rng or random).random()
    return points


def _mix(h: int) -> int:
    h = ((h ^ (h >> 30)) * _MIX1) & _MASK
    h = ((h ^ (h >> 27)) * _MIX2) & _MASK
    return h ^ (h >> 31)


def hash64_one(text: str, seed: int = 0) -> int:
    """features.hash64 of one string, in plain Python: the request path routes one user at a time, where
    building an Arrow array costs ~100x the hash (tests check the two agree bit for bit)."""
    data = text.encode("utf-8")
    h = _mix(len(data) ^ ((seed * _GOLDEN) & _MASK))
    for k in range(0, len(data), 8):
        h = _mix(((h ^ int.from_bytes(data[k : k + 8], "little")) + _GOLDEN) & _MASK)
    return h


def user_point(user_id: str | None, seed: int = ROUTE_SEED) -> float:
    """One user's point of `user_points` (random without a user id)."""
    if user_id is None:
        return random.random()
    return (hash64_one(str(user_id), seed) >> 11) * _UNIT


def edges(weights: Sequence[float]) -> np.ndarray:
    """(n-1,) right edges of each variant's range of [0, 1), from weights >= 0 summing to > 0."""
    w = np.asarray(weights, dtype=np.float64)
    return np.cumsum(w)[:-1] / w.sum()


def assign(points: np.ndarray, right_edges: np.ndarray) -> np.ndarray:
    """(n,) the variant position owning each point (a zero-weight variant owns an empty range)."""
    return np.searchsorted(right_edges, points, side="right")


def route_users(user_ids: Sequence[str | None], weights: dict[str, float]) -> list[str]:
    """The variant name each user is routed to under `weights` (served variants, in config order)."""
    names = list(weights)
    return [names[i] for i in assign(user_points(user_ids), edges(list(weights.values())))]


def shadow_seed(name: str) -> int:
    """A shadow's own sampling salt: which requests it scores does not follow the routing split."""
    return int(hash64([f"shadow:{name}"])[0] >> np.uint64(1))


def sampled(user_id: str | None, seed: int, share: float) -> bool:
    """Whether a request of `user_id` is in a shadow's `share` (stable per user; random without one)."""
    if share >= 1:
        return True
    if share <= 0:
        return False
    return user_point(user_id, seed) < share


@dataclass(frozen=True)
class Variant:
    """A loaded variant: its spec and its ServingModel (seqctr.serving.deployments)."""

    name: str
    spec: VariantSpec
    model: Any  # ServingModel

    def describe(self) -> dict[str, Any]:
        """A VariantInfo dict (schemas.py): the routing settings and the loaded model's identity."""
        m = self.model
        return {
            "name": self.name,
            "weight": self.spec.weight,
            "shadow": self.spec.shadow,
            "model": m.name,
            "version": m.version,
            "uri": m.uri,
            "resolved": m.source,
            "checkpoint": m.checkpoint,
            "loaded_at": m.loaded_at,
        }


@dataclass(frozen=True)
class VariantTable:
    """The variants a replica serves now; immutable, swapped as one reference (a request keeps its table)."""

    served: tuple[Variant, ...]
    shadows: tuple[tuple[Variant, int], ...]  # (variant, sampling seed)
    right_edges: tuple[float, ...]  # edges(): bisect on a tuple is the cheapest lookup for a handful

    @classmethod
    def build(cls, variants: Sequence[Variant]) -> VariantTable:
        served = tuple(v for v in variants if not v.spec.shadow)
        if not served or sum(v.spec.weight for v in served) <= 0:
            raise ValueError("serve.variants: no served (non-shadow) variant with weight > 0")
        shadows = tuple((v, shadow_seed(v.name)) for v in variants if v.spec.shadow)
        return cls(served, shadows, tuple(edges([v.spec.weight for v in served]).tolist()))

    @property
    def primary(self) -> Variant:
        """The served variant with the largest weight (first on ties): what /v1/model reports on top."""
        return max(self.served, key=lambda v: v.spec.weight)

    def route(self, user_id: str | None) -> Variant:
        if len(self.served) == 1:
            return self.served[0]
        return self.served[bisect.bisect_right(self.right_edges, user_point(user_id))]

    def shadows_for(self, user_id: str | None) -> list[Variant]:
        return [v for v, seed in self.shadows if sampled(user_id, seed, v.spec.weight)]

    def get(self, name: str) -> Variant | None:
        return next((v for v in (*self.served, *(s for s, _ in self.shadows)) if v.name == name), None)

    def __iter__(self) -> Iterator[Variant]:
        yield from self.served
        yield from (v for v, _ in self.shadows)


def shadow_record(request_id: str, served: dict[str, Any], shadow: Variant, scores: list[float]) -> str:
    """One JSON log line: a shadow's scores beside the served ones, keyed by request id."""
    return json.dumps(
        {
            "event": "shadow_scores",
            "request_id": request_id,
            "candidates": [item["item_id"] for item in served["items"]],
            "served": {"variant": served.get("variant"), "version": served["version"], "scores": served["scores"]},
            "shadow": {"variant": shadow.name, "version": shadow.model.version, "scores": scores},
        },
        separators=(",", ":"),
    )
