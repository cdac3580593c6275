"""A scoring replica SIGKILLed under load: Serve replaces it, and the client's retries hide the loss.

Two fixed replicas of the scorer take a bounded load (REQUESTS at CONCURRENCY) on loopback; partway
through, one replica's real process is killed. The first pass runs without retries and only records
how many requests failed (the figure depends on timing, so it is printed, not asserted); the second
pass runs with AsyncCTRClient's default retries and must lose nothing. Every answer is checked
against the offline predictor, so a retried request is also a right one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import ITEM_IDS, free_port, offline_scores, tiny_serving_config

from seqctr.serving.app import make_app
from seqctr.serving.client import AsyncCTRClient, CTRClientError

pytestmark = pytest.mark.slow
APP = "seqctr_faults"
SCORER_CLASS = f"ServeReplica:{APP}:CTRScorer"
REPLICAS = 2
REQUESTS = 300
CONCURRENCY = 8
KILL_AFTER = REQUESTS // 4  # completed requests before the kill
WAIT_S = 120.0  # a guard against hanging CI, not a performance bound
BODIES = [  # a few distinct requests, cycled: each answer is checked against its offline scores
    (ITEM_IDS[k : k + 1 + k % 9], [ITEM_IDS[(k * 7 + j) % len(ITEM_IDS)] for j in range(5)]) for k in range(8)
]


def scorer_replicas() -> dict[str, Any]:
    """actor_id -> state record of this app's live scorer replicas (Ray's state API)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", SCORER_CLASS), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return {a.actor_id: a for a in actors}


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.deployments["CTRScorer"].replica_states.get("RUNNING", 0) if app else 0


def wait_for_replacement(victim: str) -> dict[str, Any]:
    """Block until Serve runs REPLICAS scorer replicas again, none of them the killed one."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        replicas = scorer_replicas()
        if len(replicas) == REPLICAS and victim not in replicas and running_replicas() == REPLICAS:
            return replicas
        time.sleep(0.5)
    pytest.fail(f"Serve did not replace the killed replica within {WAIT_S:.0f}s: {scorer_replicas()}")


@pytest.fixture(scope="module")
def endpoint(ray_session, checkpoints: dict[str, Path]) -> dict[str, Any]:
    from ray import serve

    cfg = tiny_serving_config(
        f"serve.model={checkpoints['a']}",
        f"serve.min_replicas={REPLICAS}",
        f"serve.max_replicas={REPLICAS}",
        "serve.max_batch_size=8",
        "serve.batch_wait_timeout_s=0.002",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(make_app(cfg, scorer_cpus=0.5, encoder_cpus=0.25), name=APP, route_prefix="/")
    expected = [offline_scores(checkpoints["a"], history, candidates) for history, candidates in BODIES]
    yield {"url": f"http://127.0.0.1:{port}", "expected": expected}
    serve.delete(APP)
    serve.shutdown()


async def drive_with_a_kill(client: AsyncCTRClient, expected: list[np.ndarray]) -> tuple[Counter, Any]:
    """Send REQUESTS at CONCURRENCY; SIGKILL one replica once KILL_AFTER have completed.

    Returns the outcome of every request ("ok", an HTTP status, or a transport error's name) and the
    killed replica's state record. The victim is picked before the load so the kill itself is instant.
    """
    victim = next(iter(scorer_replicas().values()))
    outcomes: Counter = Counter()
    issued = 0
    killed = asyncio.Event()

    async def one(k: int) -> None:
        history, candidates = BODIES[k % len(BODIES)]
        try:
            response = await client.score(history, candidates)
        except CTRClientError as err:
            outcomes[err.status] += 1
        except httpx.TransportError as err:
            outcomes[type(err).__name__] += 1
        else:
            np.testing.assert_allclose(response.scores, expected[k % len(BODIES)], atol=1e-5)
            outcomes["ok"] += 1
        if not killed.is_set() and sum(outcomes.values()) >= KILL_AFTER:
            killed.set()
            os.kill(victim.pid, signal.SIGKILL)

    async def worker() -> None:
        nonlocal issued
        while issued < REQUESTS:
            issued += 1
            await one(issued - 1)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert killed.is_set() and sum(outcomes.values()) == REQUESTS
    return outcomes, victim


def test_a_killed_replica_is_replaced_and_retries_lose_no_request(endpoint: dict[str, Any]) -> None:
    assert len(scorer_replicas()) == REPLICAS

    async def load(**retry_options: Any) -> tuple[Counter, Any]:
        async with AsyncCTRClient(endpoint["url"], timeout=30, **retry_options) as client:
            return await drive_with_a_kill(client, endpoint["expected"])

    # Without retries: the figure the retries have to hide (timing-dependent, recorded only).
    bare, victim = asyncio.run(load(retries=0))
    replicas = wait_for_replacement(victim.actor_id)
    print(
        f"\n[replica-faults] no retries: {REQUESTS - bare['ok']}/{REQUESTS} failed {dict(bare)}; "
        f"killed pid {victim.pid}, replicas now pids {sorted(a.pid for a in replicas.values())}"
    )

    # With the client's default retries: nothing is lost, and Serve again replaces the replica.
    retried, victim = asyncio.run(load())
    replicas = wait_for_replacement(victim.actor_id)
    print(
        f"[replica-faults] with retries: {REQUESTS - retried['ok']}/{REQUESTS} failed {dict(retried)}; "
        f"killed pid {victim.pid}, replicas now pids {sorted(a.pid for a in replicas.values())}"
    )
    assert retried == Counter({"ok": REQUESTS})


def test_async_client_retries_5xx_and_transport_errors_but_not_4xx() -> None:
    """The retry policy on its own (no Serve): which answers are tried again, and how often."""
    ok = {"model": "m", "version": "v", "scores": [0.5], "items": [{"item_id": "a", "score": 0.5, "source": "known"}]}
    calls: list[int | str] = []

    def replay(*answers: int | str) -> httpx.MockTransport:
        queue = list(answers)

        def handler(request: httpx.Request) -> httpx.Response:
            answer = queue.pop(0)
            calls.append(answer)
            if answer == "reset":
                raise httpx.RemoteProtocolError("connection reset", request=request)
            return httpx.Response(answer, json=ok if answer == 200 else {"detail": "x"})

        return httpx.MockTransport(handler)

    async def score(transport: httpx.MockTransport, retries: int = 3) -> Any:
        async with AsyncCTRClient("http://x", retries=retries, backoff_s=0, transport=transport) as client:
            return await client.score(["h"], ["a"])

    assert asyncio.run(score(replay(500, "reset", 503, 200))).scores == [0.5]
    assert calls == [500, "reset", 503, 200]
    # (answers, retries) -> the status raised and how many attempts were made: a 4xx at once, a 5xx after
    # the retries run out
    for answers, retries, status, attempts in (
        ((422, 200), 3, 422, 1),
        ((500, 200), 0, 500, 1),
        ((502,) * 4, 3, 502, 4),
    ):
        calls.clear()
        with pytest.raises(CTRClientError) as err:
            asyncio.run(score(replay(*answers), retries))
        assert (err.value.status, len(calls)) == (status, attempts)
