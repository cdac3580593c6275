"""Progress lines of long work: the formatting and ETA logic, and that embed and evaluate print them."""

from __future__ import annotations

import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.platform import progress as progress_module
from seqctr.platform.progress import Progress, format_duration, progress_line

LINE = re.compile(
    r"^(?P<what>[\w ]+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \(\d+%\), [\d,]+ \w+/s, ETA \S+$"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0, 7.4, 59.6, 76, 3599, 7380)] == [
        "0s",
        "7s",
        "1m00s",
        "1m16s",
        "59m59s",
        "2h03m",
    ]
    assert format_duration(float("inf")) == format_duration(float("nan")) == format_duration(-1) == "?"


def test_progress_line_rate_share_and_eta():
    assert progress_line("embed", 12_500, 50_000, 25.0, "items") == (
        "embed: 12,500/50,000 items (25%), 500 items/s, ETA 1m15s"
    )
    assert progress_line("embed", 0, 10, 3.0, "items").endswith("0 items/s, ETA ?")  # no rate yet
    assert progress_line("x", 10, 10, 2.0, "rows").endswith("(100%), 5 rows/s, ETA 0s")
    assert "(100%)" in progress_line("x", 12, 10, 2.0, "rows")  # more rows than announced: capped, no negative ETA
    assert progress_line("x", 0, 0, 1.0, "rows").endswith("(100%), 0 rows/s, ETA 0s")


def test_progress_prints_at_most_every_interval_and_a_closing_line():
    lines: list[str] = []
    clock = FakeClock()
    progress = Progress(lines.append, "evaluate", total=1000, unit="samples", every_s=5.0, clock=clock)
    clock.now += 1.0
    progress.advance(100)  # 1 s in: too soon
    assert lines == []
    clock.now += 4.0
    progress.advance(100)  # 5 s in
    assert lines == ["evaluate: 200/1,000 samples (20%), 40 samples/s, ETA 20s"]
    clock.now += 2.0
    progress.advance(100)
    assert len(lines) == 1
    clock.now += 3.0
    progress.advance(0)  # a tick with nothing new still reports after the interval
    assert len(lines) == 2 and LINE.match(lines[1])
    clock.now += 10.0
    progress.advance(700)  # all done: no interval line, the closing line says so
    progress.finish()
    assert len(lines) == 3 and lines[2] == "evaluate: 1,000/1,000 samples done, 50 samples/s in 20s"


def test_ticking_reports_while_the_caller_is_blocked():
    lines: list[str] = []
    with Progress(lines.append, "embed", total=10, unit="items", every_s=0.05).ticking() as progress:
        time.sleep(0.4)  # blocked: waiting for an actor to start
        progress.advance(10)
    assert len(lines) >= 3
    assert all(LINE.match(line) for line in lines[:-1]) and lines[0].startswith("embed: 0/10 items (0%)")
    assert lines[-1].startswith("embed: 10/10 items done")


def test_ticking_prints_no_closing_line_on_error():
    lines: list[str] = []
    with pytest.raises(RuntimeError), Progress(lines.append, "embed", total=10, every_s=60).ticking():
        raise RuntimeError("boom")
    assert lines == []


# ----------------------------------------------------------------------------- the stages print them


def _progress_lines(text: str, prefix: str, what: str) -> list[str]:
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(f"{prefix}{what}: ")]


def test_embed_items_prints_progress_lines(ray_session, tmp_path, monkeypatch, capsys):
    from seqctr.platform.config import EmbedConfig
    from seqctr.platform.data.embeddings import embed_items

    monkeypatch.setattr(progress_module, "EVERY_S", 0.2)
    n = 300
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": list(range(n)), "text": [f"item number {i}" for i in range(n)]}), items)
    report = embed_items(str(items), EmbedConfig(model="tiny", out=str(tmp_path / "out"), batch_size=8, max_length=16))
    assert report["rows"] == n and report["actors"] >= 1 and report["first_block_s"] > 0
    lines = _progress_lines(capsys.readouterr().err, "[seqctr.embed] ", "embed")
    assert len(lines) >= 2, lines  # at least one interval line (actor start-up alone takes seconds) + the closing one
    assert all(LINE.match(line) and LINE.match(line)["total"] == "300" for line in lines[:-1])
    assert lines[-1].startswith("embed: 300/300 items done")


class _FakeLoaded:
    """Stands in for a loaded checkpoint: score_dataset needs only config, index and predict."""

    class config:  # noqa: N801 - attribute access like the real ExperimentConfig
        class model:  # noqa: N801
            id_buckets = 8

        class data:  # noqa: N801
            max_seq_len = 4

    index = None

    def predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.05)
        return np.full(len(arrays["label"]), 0.5, dtype=np.float32)


class _Batches:
    """A Dataset's iter_batches over an in-memory table, in slices of batch_size rows."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def iter_batches(self, batch_format: str, batch_size: int):
        for start in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(start, batch_size)


def test_score_dataset_prints_progress_lines(monkeypatch, capsys):
    from seqctr.training import evaluation

    monkeypatch.setattr(progress_module, "EVERY_S", 0.1)
    monkeypatch.setattr(evaluation, "load_model", lambda _: _FakeLoaded())
    monkeypatch.setattr(evaluation, "side_of", lambda _: None)
    monkeypatch.setattr(
        evaluation,
        "encode_table",
        lambda batch, *_: {"label": batch["label"].to_numpy(), "user": batch["user"].to_numpy()},
    )
    n = 8192 * 6
    table = pa.table({"label": np.arange(n) % 2, "user": np.arange(n) % 7})
    arrays = evaluation.score_dataset("ckpt", _Batches(table), total=n, what="evaluate test")
    assert len(arrays["prob"]) == n
    lines = _progress_lines(capsys.readouterr().err, "[seqctr.evaluate] ", "evaluate test")
    assert len(lines) >= 2, lines
    assert all(LINE.match(line) for line in lines[:-1])
    assert lines[-1].startswith(f"evaluate test: {n:,}/{n:,} samples done")


def test_parquet_rows_reads_footers(tmp_path):
    from seqctr.training.evaluation import parquet_rows

    (tmp_path / "split").mkdir()
    for i, rows in enumerate((3, 5)):
        pq.write_table(pa.table({"x": list(range(rows))}), tmp_path / "split" / f"part-{i}.parquet")
    assert parquet_rows(str(tmp_path / "split")) == 8
