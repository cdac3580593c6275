"""Overload behaves: beyond `max_ongoing_requests` and `max_queued_requests` the endpoint answers 503
at once (never a timeout, never another error), and the client's backoff with jitter gets every request
through; the client never retries a 422 or the app's own deterministic 500.

The scorer here takes one request at a time with one more queued (serve.max_ongoing_requests=1,
serve.max_queued_requests=1), so a burst of concurrent requests must overflow it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import ITEM_IDS, free_port, offline_scores, tiny_serving_config

from seqctr.serving.app import make_app
from seqctr.serving.client import AsyncCTRClient, CTRClient, CTRClientError, RetryPolicy
from seqctr.serving.schemas import NO_RETRY_HEADER

APP = "seqctr_overload"
BURST = 32
HISTORY, CANDIDATES = ITEM_IDS[:8], ITEM_IDS[10:40]
BODY = {"history": HISTORY, "candidates": CANDIDATES}


@pytest.fixture(scope="module")
def endpoint(ray_session, checkpoints: dict[str, Path]) -> dict[str, Any]:
    from ray import serve

    cfg = tiny_serving_config(
        f"serve.model={checkpoints['a']}",
        "serve.min_replicas=1",
        "serve.max_replicas=1",
        "serve.max_batch_size=1",
        "serve.max_ongoing_requests=1",
        "serve.max_queued_requests=1",
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(make_app(cfg), name=APP, route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "expected": offline_scores(checkpoints["a"], HISTORY, CANDIDATES)}
    serve.delete(APP)
    serve.shutdown()


async def burst(url: str) -> list[Any]:
    """BURST requests at once, no retries: each one's status, or the name of its transport error."""
    limits = httpx.Limits(max_connections=BURST)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one() -> Any:
            try:
                return (await http.post("/v1/score", json=BODY)).status_code
            except httpx.TransportError as err:
                return type(err).__name__

        return await asyncio.gather(*(one() for _ in range(BURST)))


@pytest.mark.slow
def test_beyond_the_queue_limit_requests_get_503_not_timeouts(endpoint: dict[str, Any]) -> None:
    outcomes: Counter = Counter()
    for _ in range(10):  # one burst overflows a 1 + 1 scorer in practice; a few more guard a slow start
        outcomes.update(asyncio.run(burst(endpoint["url"])))
        if outcomes[503]:
            break
    print(f"\n[overload] {dict(outcomes)}")
    assert outcomes[503] > 0 and outcomes[200] > 0
    assert set(outcomes) == {200, 503}, outcomes  # refused at once: no timeout, reset or other status


@pytest.mark.slow
def test_the_clients_backoff_gets_a_refused_burst_through(endpoint: dict[str, Any]) -> None:
    async def run() -> list[Any]:
        async with AsyncCTRClient(endpoint["url"], timeout=60, retries=8, backoff_s=0.05) as client:
            return await asyncio.gather(*(client.score(HISTORY, CANDIDATES) for _ in range(BURST)))

    for response in asyncio.run(run()):
        np.testing.assert_allclose(response.scores, endpoint["expected"], atol=1e-5)


def test_retries_back_off_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.1, max_backoff_s=1.0, jitter=0.5)
    busy = httpx.Response(503)
    waits = [[policy.delay(attempt, busy) for _ in range(200)] for attempt in range(5)]
    for attempt, drawn in enumerate(waits):
        ceiling = min(0.1 * 2**attempt, 1.0)
        assert all(ceiling * 0.5 <= w <= ceiling for w in drawn)
        assert len(set(drawn)) > 100  # jittered: clients refused together do not return together
    assert policy.delay(5, busy) is None  # out of retries
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "0.7"})) >= 0.7
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "600"})) <= 1.0  # capped
    assert policy.delay(0, httpx.ConnectError("refused")) is not None


def test_deterministic_answers_are_never_retried() -> None:
    """A 422 (bad request) and the app's own 500 (marked NO_RETRY_HEADER) are raised at once; a bare
    500 (Serve's proxy, a replica died) and a 503 are retried."""
    ok = {"model": "m", "version": "v", "scores": [0.5], "items": [{"item_id": "a", "score": 0.5, "source": "known"}]}
    calls: list[str] = []

    def replay(*answers: str) -> httpx.MockTransport:
        queue = list(answers)

        def handler(request: httpx.Request) -> httpx.Response:
            answer = queue.pop(0)
            calls.append(answer)
            if answer == "app-500":
                return httpx.Response(500, json={"detail": "scoring failed"}, headers={NO_RETRY_HEADER: "1"})
            return httpx.Response(int(answer), json=ok if answer == "200" else {"detail": "x"})

        return httpx.MockTransport(handler)

    for answers, status, attempts in ((("422", "200"), 422, 1), (("app-500", "200"), 500, 1)):
        calls.clear()
        with CTRClient("http://x", retries=3, backoff_s=0, transport=replay(*answers)) as client:
            with pytest.raises(CTRClientError) as err:
                client.score(["h"], ["a"])
        assert (err.value.status, len(calls)) == (status, attempts)
    calls.clear()
    with CTRClient("http://x", retries=3, backoff_s=0, transport=replay("500", "503", "200")) as client:
        assert client.score(["h"], ["a"]).scores == [0.5]
    assert calls == ["500", "503", "200"]
