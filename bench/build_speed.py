"""Sample-build throughput: `build_and_write` on a local Ray vs a bare single-process baseline.

    .venv/bin/python bench/build_speed.py --events 1000000 [--repeat 3] [--breakdown]

Writes a synthetic log (seqctr.platform.data.synthetic when available, else a plain numpy random log),
runs the full pipeline on Ray (validate, read + partition by user, time split, histories, Parquet
write, item index), then the same work in one process with pyarrow + numpy only (read the whole log
into memory, `samples_from_events`, one Parquet file per split). Prints both rates and their ratio;
with --repeat, the best of N alternating runs of each (the least disturbed by a shared machine).
The bare baseline only works while the log fits in one process's memory; the Ray pipeline never
loads the log into the driver.

--breakdown also times, in the same Ray session, each stage of the Ray Data form of the build (what
`build_and_write` was before issue #14: a scan pass, then read -> hash shard -> groupby.map_groups ->
partitioned write_parquet), with the operator times from `ds.stats()`, beside the bare stages.
Measured on 1M events, 2 shared cores: Ray Data's read alone cost more than the whole bare build
(first read_parquet 17 s, the next 4 s, four plain tasks reading the same files 0.2 s; its ListFiles
operator held 18 s of wall time on 0.1 s of CPU and packed all files into one read task), the scan
was a second full read (11-15 s), the write 9.4 s; the hash shuffle (0.5 s) and the per-shard numpy
(2.9 s) were ~10% of the 35 s. Hence the build in plain Ray tasks, one read of the log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
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
    read = time.perf_counter()
    samples = samples_from_events(table, max_seq_len)
    ts = samples.column("timestamp").to_numpy()
    t_val, t_test = boundaries_from_sketch(ts, np.ones(ts.size), train, val)
    built = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for name, mask in (("train", ts < t_val), ("val", (ts >= t_val) & (ts < t_test)), ("test", ts >= t_test)):
        pq.write_table(samples.filter(pa.array(mask)), out / f"{name}.parquet")
    end = time.perf_counter()
    seconds = end - start
    return {
        "rows": samples.num_rows,
        "seconds": seconds,
        "samples_per_s": samples.num_rows / seconds,
        "stage_seconds": {
            "read": round(read - start, 3),
            "samples": round(built - read, 3),
            "write": round(end - built, 3),
        },
    }


def _operator_seconds(stats: str) -> dict[str, float]:
    """{operator: wall seconds} from a `ds.stats()` text ("Operator N name: ... produced in 1.23s")."""
    found = {}
    for line in stats.splitlines():
        match = re.match(r"Operator \d+ (.+?): .* in ([0-9.]+)s$", line.strip())
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def ray_data_breakdown(events_path: str, out: Path, max_seq_len: int, rows: int) -> dict:
    """Each stage of the Ray Data form of the build (before issue #14), timed apart, with its operators."""
    import ray

    from seqctr.platform.data.contract import list_parquet_files
    from seqctr.platform.data.samples import _read_event_files, build_samples, summarise_events

    files = list_parquet_files(events_path)
    result: dict[str, dict] = {}

    def timed(name: str, run: Callable[[], object]) -> object:
        start = time.perf_counter()
        ds = run()
        result[name] = {"seconds": round(time.perf_counter() - start, 3)}
        if isinstance(ds, ray.data.Dataset):
            result[name]["operators"] = _operator_seconds(ds.stats())
        return ds

    timed("read + normalise", lambda: _read_event_files(files).materialize())
    timed(
        "scan (timestamps, items)", lambda: summarise_events(_read_event_files(files, ["timestamp", "item_id"]), True)
    )
    partitions = int(np.clip(rows // 250_000, 1, 200))
    samples = timed(
        "read + shard + groupby.map_groups",
        lambda: build_samples(
            _read_event_files(files), max_seq_len, num_shards=max(1, rows // 50_000), num_partitions=partitions
        ).materialize(),
    )
    timed("write_parquet", lambda: samples.write_parquet(str(out)))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--max-seq-len", type=int, default=30)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all).")
    parser.add_argument("--work-dir", default=None, help="Where the log and outputs go (default: a temp dir).")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="Best of N alternating runs of each.")
    parser.add_argument("--breakdown", action="store_true", help="Also time the Ray Data form stage by stage.")
    args = parser.parse_args(argv)

    import ray

    from seqctr.platform.data.samples import build_and_write

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqctr-bench-"))
    t0 = time.perf_counter()
    events_path = write_log(work / "data", args.events, args.users, args.items, seed=0)
    print(f"[bench] wrote {args.events} events in {time.perf_counter() - t0:.1f}s to {events_path}", file=sys.stderr)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.range(8).map_batches(lambda b: b).take_all()  # start workers outside the timed part
    reports, bares = [], []
    for k in range(max(1, args.repeat)):
        say = (lambda m: print(f"[seqctr.data] {m}", file=sys.stderr, flush=True)) if k == 0 else None
        reports.append(
            build_and_write(events_path, str(work / f"samples-{k}"), args.max_seq_len, 0.8, 0.1, progress=say)
        )
        if not args.skip_baseline:
            bares.append(bare_baseline(events_path, work / f"bare-{k}", args.max_seq_len, 0.8, 0.1))
    report = max(reports, key=lambda r: r["samples_per_s"])
    result = {
        "events": args.events,
        "ray": {
            "samples_per_s": round(report["samples_per_s"]),
            "seconds": round(report["seconds"], 2),
            "runs_s": [round(r["seconds"], 2) for r in reports],
            "stage_seconds": report["stage_seconds"],
            "rows": report["rows"],
        },
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    if bares:
        bare = max(bares, key=lambda r: r["samples_per_s"])
        result["bare"] = {
            "samples_per_s": round(bare["samples_per_s"]),
            "seconds": round(bare["seconds"], 2),
            "runs_s": [round(r["seconds"], 2) for r in bares],
            "stage_seconds": bare["stage_seconds"],
        }
        result["ray_over_bare"] = round(report["samples_per_s"] / bare["samples_per_s"], 3)
    if args.breakdown:
        result["ray_data_breakdown"] = ray_data_breakdown(
            events_path, work / "ray-data-out", args.max_seq_len, args.events
        )
    ray.shutdown()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
