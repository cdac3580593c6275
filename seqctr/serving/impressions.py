"""The impression log: every served and shadow score, with its request id, appended to Parquet files.

    serve:
      impressions: s3://bucket/seqctr/impressions     # or a local folder; empty = no log

One row per (request, variant, candidate): `request_id`, `user_id`, `logged_at` (unix ms), `variant`,
`version`, `role` (served | shadow), `item_id`, `position`, `score`. A log is a folder of
`part-<first ms>-<writer>-<seq>.parquet` files (`pyarrow.dataset.dataset(FOLDER)` reads them all), each
written whole (storage.atomic_write_bytes: a renamed temporary file, or one object-store PUT), so a reader
never sees half a file. Why one row per candidate: the clicks that come later are (user, item, time)
events, which join on `user_id` + `item_id` without unnesting: `seqctr evaluate --impressions LOG --events
CLICKS` (seqctr/serving/evidence.py) does that join and scores each variant, served and shadow apart.

Rows are buffered in the replica and written by one background thread when `serve.impressions_flush_rows`
have gathered or `serve.impressions_flush_s` have passed since the first of them (checked on each add),
so the request path only appends to lists. Memory is bounded: beyond `serve.impressions_max_rows` buffered
or being written, new rows are dropped and counted (`dropped`), never queued without limit.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seqctr.platform import storage

logger = logging.getLogger("ray.serve")

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("logged_at", pa.int64()),
        ("variant", pa.string()),
        ("version", pa.string()),
        ("role", pa.string()),
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("score", pa.float32()),
    ]
)


class ImpressionLog:
    """A buffered, bounded Parquet writer for one replica (thread-safe; the event loop only appends)."""

    def __init__(self, root: str, flush_rows: int = 10_000, flush_s: float = 10.0, max_rows: int = 100_000) -> None:
        self.root = storage.absolute(root)
        self.flush_rows, self.flush_s, self.max_rows = flush_rows, flush_s, max(max_rows, flush_rows)
        self.writer = uuid.uuid4().hex[:8]  # files of different replicas never collide
        self.dropped = self.written = self.files = 0
        self.errors: list[str] = []
        self._columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        self._first: float | None = None
        self._in_flight = 0  # rows handed to the writer thread, not yet written
        self._seq = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqctr-impressions")
        self._pending: list[Future] = []

    def add(
        self,
        request_id: str,
        user_id: str | None,
        variant: str,
        version: str,
        role: str,
        items: list[str],
        scores: list[float],
    ) -> None:
        """Buffer one scored request (one row per candidate); may hand a full buffer to the writer thread."""
        n = len(items)
        now = time.time()
        with self._lock:
            if len(self._columns["item_id"]) + self._in_flight + n > self.max_rows:
                self.dropped += n
                return
            c = self._columns
            c["request_id"] += [request_id] * n
            c["user_id"] += [user_id] * n
            c["logged_at"] += [int(now * 1000)] * n
            c["variant"] += [variant] * n
            c["version"] += [version] * n
            c["role"] += [role] * n
            c["item_id"] += items
            c["position"] += range(n)
            c["score"] += scores
            self._first = self._first or now
            due = len(c["item_id"]) >= self.flush_rows or now - self._first >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> Future | None:
        """Hand the buffered rows to the writer thread now; returns its future (None when empty)."""
        with self._lock:
            rows = len(self._columns["item_id"])
            if not rows:
                return None
            columns, self._columns = self._columns, {name: [] for name in SCHEMA.names}
            first, self._first = self._first or time.time(), None
            self._in_flight += rows
            self._seq += 1
            name = f"part-{int(first * 1000)}-{self.writer}-{self._seq:06d}.parquet"
            future = self._executor.submit(self._write, columns, rows, name)
            self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def _write(self, columns: dict[str, list[Any]], rows: int, name: str) -> None:
        try:
            table = pa.table(columns, schema=SCHEMA)
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd")
            storage.atomic_write_bytes(storage.join(self.root, name), sink.getvalue())
            with self._lock:
                self.written += rows
                self.files += 1
        except Exception as err:  # noqa: BLE001 - a log failure loses those rows, never a request
            logger.error("impression log: writing %d rows to %s failed: %s", rows, self.root, err)
            with self._lock:
                self.dropped += rows
                self.errors = [*self.errors[-4:], f"{type(err).__name__}: {err}"]
        finally:
            with self._lock:
                self._in_flight -= rows

    def close(self) -> None:
        """Write what is buffered and wait for every write (replica shutdown, tests)."""
        self.flush()
        for future in list(self._pending):
            future.result()
        self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "root": self.root,
                "buffered": len(self._columns["item_id"]),
                "written": self.written,
                "files": self.files,
                "dropped": self.dropped,
                "errors": list(self.errors),
            }
