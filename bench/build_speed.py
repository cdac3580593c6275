"""Sample-build throughput: `build_and_write` on a local Ray vs a bare single-process baseline.

    .venv/bin/python bench/build_speed.py --events 1000000

Writes a synthetic log (seqctr.platform.data.synthetic when available, else a plain numpy random log),
runs the full Ray Data pipeline (validate, scan, shuffle by user, histories, time split, Parquet
write, item index), then the same work in one process with pyarrow + numpy only (read the whole log
into memory, `samples_from_events`, one Parquet file per split). Prints both rates and their ratio.
The bare baseline only works while the log fits in one process's memory; the Ray pipeline never
loads the log into the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def write_log(out: Path, events: int, users: int, items: int, seed: int) -> str:
    """The events folder of a synthetic log: the project's generator if present, else numpy."""
    try:
        from seqctr.platform.config import SyntheticConfig
        from seqctr.platform.data.synthetic import generate_synthetic

        cfg = SyntheticConfig(users=users, items=items, events=events, seed=seed, chunk_events=250_000)
        return str(generate_synthetic(cfg, out)["events_path"])
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    folder = out / "events"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 250_000
    for k, start in enumerate(range(0, events, chunk)):
        n = min(chunk, events - start)
        table = pa.table(
            {
                "user_id": pa.array(np.char.add("u", rng.integers(0, users, n).astype(str))),
                "item_id": pa.array(np.char.add("i", rng.integers(0, items, n).astype(str))),
                "timestamp": pa.array(1_700_000_000 + rng.integers(0, 30 * 86_400, n), type=pa.int64()),
                "label": pa.array((rng.random(n) < 0.2).astype(np.int8)),
            }
        )
        pq.write_table(table, folder / f"part-{k:05d}.parquet")
    return str(folder)


def bare_baseline(events_path: str, out: Path, max_seq_len: int, train: float, val: float) -> dict:
    """The same samples and split, in one process, whole log in memory."""
    from seqctr.platform.data.samples import boundaries_from_sketch, normalise_events, samples_from_events

    start = time.perf_counter()
    table = normalise_events(pq.read_table(events_path, columns=["user_id", "item_id", "timestamp", "label"]))
    samples = samples_from_events(table, max_seq_len)
    ts = samples.column("timestamp").to_numpy()
    t_val, t_test = boundaries_from_sketch(ts, np.ones(ts.size), train, val)
    out.mkdir(parents=True, exist_ok=True)
    for name, mask in (("train", ts < t_val), ("val", (ts >= t_val) & (ts < t_test)), ("test", ts >= t_test)):
        pq.write_table(samples.filter(pa.array(mask)), out / f"{name}.parquet")
    seconds = time.perf_counter() - start
    return {"rows": samples.num_rows, "seconds": seconds, "samples_per_s": samples.num_rows / seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--max-seq-len", type=int, default=30)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all).")
    parser.add_argument("--work-dir", default=None, help="Where the log and outputs go (default: a temp dir).")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args(argv)

    import ray

    from seqctr.platform.data.samples import build_and_write

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-bench-"))
    t0 = time.perf_counter()
    events_path = write_log(work / "data", args.events, args.users, args.items, seed=0)
    print(f"[bench] wrote {args.events} events in {time.perf_counter() - t0:.1f}s to {events_path}", file=sys.stderr)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.range(8).map_batches(lambda b: b).take_all()  # start workers outside the timed part
    report = build_and_write(events_path, str(work / "samples"), args.max_seq_len, 0.8, 0.1)
    ray.shutdown()
    result = {
        "events": args.events,
        "ray": {
            "samples_per_s": round(report["samples_per_s"]),
            "seconds": round(report["seconds"], 2),
            "stage_seconds": report["stage_seconds"],
            "rows": report["rows"],
        },
        "cpus": os.cpu_count(),
    }
    if not args.skip_baseline:
        bare = bare_baseline(events_path, work / "bare", args.max_seq_len, 0.8, 0.1)
        result["bare"] = {"samples_per_s": round(bare["samples_per_s"]), "seconds": round(bare["seconds"], 2)}
        result["ray_over_bare"] = round(report["samples_per_s"] / bare["samples_per_s"], 3)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
