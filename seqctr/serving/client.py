"""Typed Python clients for the CTR endpoint, blocking (`CTRClient`) and asyncio (`AsyncCTRClient`).

    from seqctr.serving.client import CTRClient
    with CTRClient("http://127.0.0.1:8000") as client:
        print(client.rank(history=["i1", "i2"], candidates=["i3", "i4", "i5"], k=2).items)

    async with AsyncCTRClient("http://127.0.0.1:8000") as client:
        print((await client.score(history=["i1"], candidates=["i3"])).scores)

Scoring is a pure function of its input, so both clients retry it safely (`RetryPolicy`): on connection
errors, timeouts and 5xx answers, with exponential backoff and jitter (so clients that were refused
together do not come back together), never sooner than a `Retry-After` the server sent. A 5xx is what
Serve's proxy answers when the replica holding a request dies (500), when none is ready (503, e.g.
during a rolling update), or when every replica is busy and `serve.max_queued_requests` wait already
(503, at once, instead of a timeout); the retry then lands on a live or less busy replica. Never
retried: 4xx answers (a bad request: 422 names the field) and the app's own 500s, which carry
`X-Seqctr-No-Retry` because the same request would fail the same way.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from seqctr.serving.schemas import (
    API_KEY_HEADER,
    NO_RETRY_HEADER,
    CandidateItem,
    ModelInfo,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
)

Candidate = str | int | CandidateItem | dict[str, Any]
R = TypeVar("R", bound=BaseModel)
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class CTRClientError(RuntimeError):
    """The endpoint answered with an error; `status` is the HTTP status, `detail` its JSON detail."""

    def __init__(self, status: int, detail: Any, url: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class RetryPolicy:
    """When an idempotent request is sent again: `retries` extra attempts on a transport error or a status
    in `statuses` (except the app's own deterministic 500s), waiting about backoff_s, 2*backoff_s, ... (at
    most max_backoff_s) in between, each wait shortened by a random fraction up to `jitter`, and never
    shorter than the answer's Retry-After (itself capped at max_backoff_s)."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    statuses: frozenset[int] = RETRY_STATUSES
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {self.backoff_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def retryable(self, outcome: httpx.Response | httpx.TransportError) -> bool:
        """Whether the outcome may be tried again: a transport error (nothing was scored), or a status in
        `statuses` that is not marked deterministic by the app."""
        if isinstance(outcome, httpx.TransportError):
            return True
        return outcome.status_code in self.statuses and NO_RETRY_HEADER not in outcome.headers

    def delay(self, attempt: int, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before trying again after attempt `attempt` (0-based), or None: give up."""
        if attempt >= self.retries or not self.retryable(outcome):
            return None
        wait = min(self.backoff_s * 2**attempt, self.max_backoff_s) * (1 - self.jitter * random.random())
        return max(wait, min(retry_after(outcome), self.max_backoff_s))


def retry_after(outcome: httpx.Response | httpx.TransportError) -> float:
    """The answer's Retry-After in seconds (0 when absent or not a number of seconds)."""
    value = outcome.headers.get("retry-after") if isinstance(outcome, httpx.Response) else None
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: ignored, the backoff applies
        return 0.0


def _body(
    history: Sequence[str | int | dict[str, Any]],
    candidates: Sequence[Candidate],
    k: int | None,
    history_timestamps: Sequence[int] | None,
    timestamp: int | None,
    user_id: str | None,
    explain: bool,
    side: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A score request (a rank request with `k`), checked locally by the server's own pydantic model.
    `history_timestamps` (one per history item) turns the history into {item_id, timestamp} clicks;
    `side`: the request's side fields (context, user_impressions, user_clicks, user_item_counts,
    recent_impressions: data.features)."""
    clicks: list[Any] = list(history)
    if history_timestamps is not None:
        stamps = list(history_timestamps)
        if len(stamps) != len(clicks):
            raise ValueError(f"history_timestamps: {len(stamps)} timestamps for {len(clicks)} history items")
        clicks = [{"item_id": item, "timestamp": ts} for item, ts in zip(clicks, stamps, strict=True)]
    fields = {
        "history": clicks,
        "candidates": list(candidates),
        "timestamp": timestamp,
        "user_id": user_id,
        "explain": explain,
        **(side or {}),
    }
    request = ScoreRequest(**fields) if k is None else RankRequest(**fields, k=k)
    return request.model_dump(exclude_none=True)


def _parse(outcome: httpx.Response | httpx.TransportError, out: type[R], url: str) -> R:
    """The final attempt's answer as `out`; a transport error is re-raised, an error status raised."""
    if isinstance(outcome, httpx.TransportError):
        raise outcome
    if outcome.is_error:
        raise CTRClientError(outcome.status_code, _detail(outcome), url)
    return out.model_validate(outcome.json())


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text


def _policy(retries: int, backoff_s: float, retry_statuses: Collection[int]) -> RetryPolicy:
    return RetryPolicy(retries=retries, backoff_s=backoff_s, statuses=frozenset(retry_statuses))


class CTRClient:
    """score / rank / model_info over HTTP, retried per `RetryPolicy` (retries=0 turns retrying off)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        retry_statuses: Collection[int] = RETRY_STATUSES,
    ) -> None:
        self.policy = _policy(retries, backoff_s, retry_statuses)
        self.url = url.rstrip("/")
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> CTRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score(
        self,
        history: Sequence[str | int | dict[str, Any]],
        candidates: Sequence[Candidate],
        *,
        history_timestamps: Sequence[int] | None = None,
        timestamp: int | None = None,
        user_id: str | None = None,
        explain: bool = False,
        **side: Any,
    ) -> ScoreResponse:
        """Click probabilities of `candidates` (ids, or {"item_id", "text"} for new items), in order.
        `history_timestamps` (unix seconds per click) let the model tell this session's clicks apart;
        `context=`, `user_impressions=`, `user_clicks=`: the side fields of a model trained with data.features."""
        body = _body(history, candidates, None, history_timestamps, timestamp, user_id, explain, side)
        return self._request("POST", "/v1/score", ScoreResponse, body)

    def rank(
        self,
        history: Sequence[str | int | dict[str, Any]],
        candidates: Sequence[Candidate],
        k: int = 10,
        *,
        history_timestamps: Sequence[int] | None = None,
        timestamp: int | None = None,
        user_id: str | None = None,
        explain: bool = False,
        **side: Any,
    ) -> RankResponse:
        """The k best candidates, best first."""
        body = _body(history, candidates, k, history_timestamps, timestamp, user_id, explain, side)
        return self._request("POST", "/v1/rank", RankResponse, body)

    def model_info(self) -> ModelInfo:
        """Name, version, metrics and config of the served model, and the latest reload attempt."""
        return self._request("GET", "/v1/model", ModelInfo)

    def _request(self, method: str, path: str, out: type[R], body: dict[str, Any] | None = None) -> R:
        attempt = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(method, path, json=body)
            except httpx.TransportError as err:  # refused, reset, timed out: nothing was scored
                outcome = err
            wait = self.policy.delay(attempt, outcome)
            if wait is None:
                return _parse(outcome, out, self.url + path)
            time.sleep(wait)
            attempt += 1


class AsyncCTRClient:
    """The asyncio twin of CTRClient (same methods, awaited; same RetryPolicy), for callers that keep
    many requests in flight on one event loop."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_statuses: Collection[int] = RETRY_STATUSES,
    ) -> None:
        self.policy = _policy(retries, backoff_s, retry_statuses)
        self.url = url.rstrip("/")
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncCTRClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(
        self,
        history: Sequence[str | int | dict[str, Any]],
        candidates: Sequence[Candidate],
        *,
        history_timestamps: Sequence[int] | None = None,
        timestamp: int | None = None,
        user_id: str | None = None,
        explain: bool = False,
        **side: Any,
    ) -> ScoreResponse:
        """Click probabilities of `candidates`, in order (see CTRClient.score)."""
        body = _body(history, candidates, None, history_timestamps, timestamp, user_id, explain, side)
        return await self._request("POST", "/v1/score", ScoreResponse, body)

    async def rank(
        self,
        history: Sequence[str | int | dict[str, Any]],
        candidates: Sequence[Candidate],
        k: int = 10,
        *,
        history_timestamps: Sequence[int] | None = None,
        timestamp: int | None = None,
        user_id: str | None = None,
        explain: bool = False,
        **side: Any,
    ) -> RankResponse:
        """The k best candidates, best first."""
        body = _body(history, candidates, k, history_timestamps, timestamp, user_id, explain, side)
        return await self._request("POST", "/v1/rank", RankResponse, body)

    async def model_info(self) -> ModelInfo:
        """The served model and the latest reload attempt (see CTRClient.model_info)."""
        return await self._request("GET", "/v1/model", ModelInfo)

    async def _request(self, method: str, path: str, out: type[R], body: dict[str, Any] | None = None) -> R:
        attempt = 0
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(method, path, json=body)
            except httpx.TransportError as err:
                outcome = err
            wait = self.policy.delay(attempt, outcome)
            if wait is None:
                return _parse(outcome, out, self.url + path)
            await asyncio.sleep(wait)
            attempt += 1
