"""The Grafana dashboard queries the metrics the replicas actually record (names from telemetry.py)."""

from __future__ import annotations

import json
from pathlib import Path

from seqctr.serving.telemetry import STAGES

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "seqctr_serving.json"
METRICS = ("seqctr_stage_ms", "seqctr_batch_size", "seqctr_candidates_per_request", "seqctr_candidates_total")


def test_dashboard_queries_every_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in (*METRICS, "seqctr_requests_total"):
        assert f"ray_{name}" in exprs, name
    assert "by (stage)" in exprs and "by (source)" in exprs and "by (model, version)" in exprs
    source = (Path(__file__).resolve().parents[2] / "seqctr" / "serving" / "telemetry.py").read_text()
    assert all(f'"{name}"' in source for name in (*METRICS, "seqctr_requests_total"))
    assert STAGES == ("receive", "parse", "encode", "embed", "batch_wait", "model", "response")
