"""`make bench`: run every benchmark in this folder, each printing its figures and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = [
    "generate_speed.py",
    "build_speed.py",
    "embed_speed.py",
    "train_throughput.py",
    "serve_latency.py",
    "variants_latency.py",  # champion/challenger routing and a shadow against serve.model alone
    "rounding_chaos.py",  # how far float rounding alone moves the tiny config's val AUC (issue #19)
    "lookup_speed.py",
    "peers.py",  # popularity, logreg, DeepCTR-Torch WDL/DIN and seqctr on the same splits
    "scale.py",  # the longest: three sizes up to 3M events and 1M items
]


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        if not (here / name).exists():
            continue
        print(f"\n=== bench/{name}", flush=True)
        if subprocess.call([sys.executable, str(here / name)]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
