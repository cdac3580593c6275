"""Autoscaling shown, not just configured: a load step adds the second scorer replica that
`serve.max_replicas: 2` allows, and it goes away once the load stops, with no failed request.

The replica count is read from Serve's own status (`serve.status()`), never inferred from latencies.
The sizing checks alongside: the embedded default's bounds fit a 2-CPU machine, and bounds that cannot
fit the cluster are reported when the app is built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_helpers import ITEM_IDS, free_port, tiny_serving_config

from seqctr.platform.config import ExperimentConfig, ServeConfig
from seqctr.serving.app import make_app
from seqctr.serving.sizing import capacity_warning, cpus_needed, replica_sizes, warn_if_unplaceable

APP = "seqctr_autoscale"
WAIT_S = 90.0  # guards against a hanging CI run, not performance bounds
CONCURRENCY = 8  # closed-loop clients: ~8 requests in flight against target_ongoing_requests=1
BODY = {"history": ITEM_IDS[:8], "candidates": ITEM_IDS[10:30]}


# ----------------------------------------------------------------------------- sizing (no Ray)


def test_the_default_bounds_fit_two_cpus() -> None:
    serve_cfg = ExperimentConfig().serve
    sizes = replica_sizes(serve_cfg)
    assert serve_cfg.max_replicas == 2 and cpus_needed(serve_cfg, sizes) <= 2
    assert capacity_warning(serve_cfg, sizes, cluster_cpus=2) is None
    assert sizes.scorer_threads == 1 and replica_sizes(serve_cfg, scorer_cpus=2.5).scorer_threads == 2


def test_bounds_that_cannot_fit_are_reported_at_build_time() -> None:
    serve_cfg = ServeConfig(max_replicas=4)
    sizes = replica_sizes(serve_cfg, scorer_cpus=1.0)
    message = capacity_warning(serve_cfg, sizes, cluster_cpus=2)
    assert message is not None and "serve.max_replicas=4 needs 5 CPUs" in message and "at most 1 replica" in message
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        assert warn_if_unplaceable(serve_cfg, sizes, cpus=2) == message
        assert warn_if_unplaceable(ServeConfig(), replica_sizes(ServeConfig()), cpus=2) is None
    finally:
        logger.removeHandler(handler)
    assert [r.levelno for r in records] == [logging.WARNING] and message in records[0].getMessage()


# ----------------------------------------------------------------------------- the load step


def replica_states() -> Counter:
    """State -> count of this app's CTRScorer replicas, from Serve's status API."""
    from ray import serve

    app = serve.status().applications.get(APP)
    return Counter(app.deployments["CTRScorer"].replica_states) if app else Counter()


def wait_for(condition: Any, what: str) -> Counter:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        states = replica_states()
        if condition(states):
            return states
        time.sleep(0.25)
    pytest.fail(f"{what} within {WAIT_S:.0f}s; replicas: {dict(replica_states())}")


@pytest.fixture(scope="module")
def endpoint(ray_session, checkpoints: dict[str, Path]) -> str:
    from ray import serve

    cfg = tiny_serving_config(
        f"serve.model={checkpoints['a']}",
        "serve.min_replicas=1",
        "serve.max_replicas=2",
        "serve.target_ongoing_requests=1",
        "serve.upscale_delay_s=1",
        "serve.downscale_delay_s=2",
        "serve.look_back_period_s=2",
        "serve.max_batch_size=4",
        "serve.batch_wait_timeout_s=0.002",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(make_app(cfg), name=APP, route_prefix="/")  # the default replica sizes (0.5 + 0.25 CPUs)
    yield f"http://127.0.0.1:{port}"
    serve.delete(APP)
    serve.shutdown()


@pytest.mark.slow
def test_a_load_step_adds_a_replica_and_removing_it_loses_no_request(endpoint: str) -> None:
    assert replica_states() == Counter({"RUNNING": 1})
    stop = threading.Event()
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=endpoint, timeout=30) as http:
            while not stop.is_set():
                try:
                    outcome: Any = http.post("/v1/score", json=BODY).status_code
                except httpx.TransportError as err:
                    outcome = type(err).__name__
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda s: s["RUNNING"] == 2, "no second replica started under load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=WAIT_S)
    under_load = sum(outcomes.values())
    wait_for(lambda s: s == Counter({"RUNNING": 1}), "the second replica was not removed after the load")
    print(f"\n[autoscaling] {under_load} requests under load: {dict(outcomes)}")
    assert under_load > 0 and outcomes == Counter({200: under_load})
    with httpx.Client(base_url=endpoint, timeout=30) as http:  # the one replica left still answers
        assert http.post("/v1/score", json=BODY).status_code == 200
