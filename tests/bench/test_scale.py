"""bench/scale.py --quick: every stage at two toy sizes, the growth exponents and the request timing.

Shape only: the figures themselves are the benchmark's business (no timed asserts here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scale  # noqa: E402


def test_quick_run_reports_every_stage_at_every_size(ray_session, tmp_path, capsys):
    result = scale.main(["--quick", "--work-dir", str(tmp_path), "--out", str(tmp_path / "scale.json")])
    sizes = scale.parse_sizes(scale.QUICK_SIZES)
    assert [(s["events"], s["items"]) for s in result["sizes"]] == sizes
    assert [(r["events"], r["stage"]) for r in result["stages"]] == [(e, st) for e, _ in sizes for st in scale.STAGES]
    for row in result["stages"]:
        assert row["seconds"] >= 0 and row["rss_tree_mb"] >= row["rss_self_mb"] > 0
    by_stage = {(r["events"], r["stage"]): r for r in result["stages"]}
    small, large = (e for e, _ in sizes)
    assert by_stage[(small, "generate")]["rows"] == small and by_stage[(large, "build")]["rows"] == large
    assert all(by_stage[(e, st)]["bytes"] > 0 for e, _ in sizes for st in ("generate", "build", "train", "checkpoint"))
    assert by_stage[(small, "serve")]["request_ms"] > 0
    assert set(result["growth"]) == set(scale.STAGES) and all(len(ks) == 1 for ks in result["growth"].values())
    assert [r["items"] for r in result["requests"]] == [int(n) for n in scale.QUICK_REQUEST_ITEMS.split(",")]
    assert result["request_ratio"] is not None and (tmp_path / "scale.json").is_file()
    printed = capsys.readouterr().out
    assert "growth exponent" in printed and "request at" in printed
    assert ray_session.is_initialized()  # the session's Ray is left running for the other tests
