"""What champion/challenger routing adds to a request: p50 latency at concurrency 1 and 8, with and without a shadow.

    .venv/bin/python bench/variants_latency.py                  # untrained default-size model, 6 s per run
    .venv/bin/python bench/variants_latency.py --duration 10 --checkpoint work/runs/seqctr/latest

One Serve app (one CTRScorer replica, the default size), the same checkpoint in every setup, requests
with a user_id (100 candidates, a 50-click timed history), the closed loop of bench/loadgen.py (wrk when
installed, else asyncio + httpx). Setups, switched by a user_config change of the live app (no restart):
  - single:         serve.model alone (no routing);
  - split 90/10:    serve.variants champion 0.9 / challenger 0.1 (the same checkpoint loaded twice);
  - 90/10 + shadow: plus a shadow that scores every request in the background.
Rows are run interleaved (single, split, shadow, single, ...) so load from other processes hits all alike;
the table gives each setup's p50 and its difference to `single` at the same concurrency. On 2 CPUs the
shadow's extra forward pass competes with the served ones for the replica's CPU: that cost shows at c=8.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from loadgen import closed_loop, find_pids, wrk_available, wrk_script  # noqa: E402
from serve_latency import request_bodies, synthetic_checkpoint  # noqa: E402

LEVELS = (1, 8)


def user_configs(checkpoint: str) -> dict[str, dict[str, Any]]:
    split = {
        "champion": {"model": checkpoint, "weight": 0.9},
        "challenger": {"model": checkpoint, "weight": 0.1},
    }
    return {
        "single": {"model": checkpoint},
        "split 90/10": {"variants": split},
        "90/10 + shadow": {"variants": {**split, "shadow": {"model": checkpoint, "shadow": True, "weight": 1.0}}},
    }


def apply(setup: str, user_config: dict[str, Any], args: dict[str, Any], port: int) -> list[int]:
    """Switch the live app to `user_config` (a reload in place after the first deploy); the server pids."""
    from seqctr.cli.serve import deploy

    info = deploy(args, user_config, name="bench", port=port, timeout_s=300)["model"]
    variants = sorted(v["name"] for v in info.get("variants") or [])
    print(f"[bench] {setup}: serving {info['version']} variants={variants or '-'}", flush=True)
    return find_pids("ServeReplica:bench:CTRScorer", "ProxyActor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="Checkpoint folder (default: an untrained default-size model).")
    parser.add_argument("--duration", type=float, default=6.0, help="Seconds per load run.")
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--python-client", action="store_true", help="Closed loop from Python even with wrk.")
    parser.add_argument("--port", type=int, default=8133)
    parser.add_argument("--out", default="work/bench/variants_latency.json")
    opts = parser.parse_args()

    import ray
    from ray import serve

    from seqctr.platform.config import load_config
    from seqctr.platform.model.predictor import load_model

    tmp = Path(tempfile.mkdtemp(prefix="variants_bench_"))
    checkpoint = Path(opts.checkpoint) if opts.checkpoint else synthetic_checkpoint(tmp / "ckpt", 2000, opts.history)
    loaded = load_model(checkpoint)
    bodies = request_bodies(loaded.index.ids, 256, opts.history, opts.candidates)
    for k, body in enumerate(bodies):
        body["user_id"] = f"user{k}"  # routed: ~10% of them to the challenger
    script = wrk_script(bodies[:64]) if wrk_available() and not opts.python_client else None
    config = tmp / "experiment.yaml"
    config.write_text(load_config(None, ["serve.min_replicas=1", "serve.max_replicas=1"]).to_yaml())
    args = {"config": str(config), "overrides": [], "encoder_cpus": 0.1}
    url = f"http://127.0.0.1:{opts.port}"
    setups = user_configs(str(checkpoint.resolve()))
    runs: dict[str, dict[str, Any]] = {name: {} for name in setups}

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        for c in LEVELS:
            for name, user_config in setups.items():
                pids = apply(name, user_config, args, opts.port)
                closed_loop(url, bodies, c, 1.0, pids, script)  # warm-up after the switch
                runs[name][f"c={c}"] = row = closed_loop(url, bodies, c, opts.duration, pids, script)
                print(f"[bench] {name} c={c}: {row}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{'setup':<16}" + "".join(f"{f'p50 c={c} (ms)':>18}{'vs single':>12}" for c in LEVELS))
    for name in setups:
        cells = ""
        for c in LEVELS:
            p50, base = runs[name][f"c={c}"]["p50_ms"], runs["single"][f"c={c}"]["p50_ms"]
            cells += f"{p50:>18.2f}{p50 - base:>+12.2f}"
        print(f"{name:<16}{cells}")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(checkpoint), "cores": os.cpu_count(), "runs": runs}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
